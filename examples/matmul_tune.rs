// TEMPORARY shader-tuning driver (reads a WGSL file at run time). Not part of the deliverable.
// usage: matmul_tune FILE BM BN SIZE [REPS] [CONST=VAL ...]
use std::time::Instant;
use taylorcal::gpu::{specialise, Gpu};
use wgpu::util::DeviceExt;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let src = std::fs::read_to_string(&a[1]).unwrap();
    let bm: u32 = a[2].parse().unwrap();
    let bn: u32 = a[3].parse().unwrap();
    let s: usize = a[4].parse().unwrap();
    let reps: usize = a.get(5).map(|v| v.parse().unwrap()).unwrap_or(2);
    let consts: Vec<(&'static str, u32)> = a.iter().skip(6).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        (&*Box::leak(k.to_string().into_boxed_str()), v.parse().unwrap())
    }).collect();
    let f16 = std::env::var("F16").is_ok();
    let src = specialise(&src, &consts, f16);
    let gpu = Gpu::new().unwrap();
    let dev = &gpu.device;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(src.into()) });
    let t = Instant::now();
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None, layout: None, module: &module, entry_point: Some(std::env::var("ENTRY").as_deref().unwrap_or("matmul")),
        compilation_options: Default::default(), cache: None });
    eprintln!("compile {:.2}s", t.elapsed().as_secs_f64());
    for (m, n, k, check) in [(67usize, 131usize, 45usize, true), (s, s, s, false)] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let tx = gpu.upload(&[m, k], &x).unwrap();
        let tw = if f16 { gpu.upload_f16(&[n, k], &w).unwrap() } else { gpu.upload(&[n, k], &w).unwrap() };
        let tb = gpu.upload(&[n], &bias).unwrap();
        let ty = gpu.zeros(&[m, n]).unwrap();
        let params: [u32; 8] = [m as u32, n as u32, k as u32, n as u32, 0, 1, 0, 0];
        let ub = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&params), usage: wgpu::BufferUsages::UNIFORM });
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipe.get_bind_group_layout(0), entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: ub.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: tx.buf.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: tw.buf.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 3, resource: tb.buf.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 4, resource: ty.buf.as_entire_binding() },
        ]});
        let r = if check { 1 } else { reps };
        let mut times = vec![];
        for _ in 0..r {
            let mut enc = dev.create_command_encoder(&Default::default());
            { let mut p = enc.begin_compute_pass(&Default::default());
              p.set_pipeline(&pipe); p.set_bind_group(0, &bg, &[]);
              p.dispatch_workgroups((n as u32).div_ceil(bn), (m as u32).div_ceil(bm), 1); }
            let t = Instant::now();
            gpu.queue.submit([enc.finish()]);
            gpu.sync().unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        if check {
            let got = gpu.read(&ty).unwrap();
            let mut err = 0f64;
            for i in 0..m { for j in 0..n {
                let mut acc = bias[j] as f64;
                for kk in 0..k { acc += x[i * k + kk] as f64 * w[j * k + kk] as f64; }
                err = err.max((acc - got[i * n + j] as f64).abs());
            }}
            eprintln!("check {m}x{n}x{k}: max abs err {err:.2e}");
            if err > 1e-3 { eprintln!("WRONG"); }
        } else {
            times.sort_by(|a, b| a.total_cmp(b));
            let t = times[times.len() / 2];
            eprintln!("{s}^3: {:.1} ms  {:.2} GFLOP/s (times {:?})", t * 1e3, 2.0 * (s * s * s) as f64 / t / 1e9, times);
        }
    }
}

//! Chat templates: the Jinja template an instruct model carries (GGUF metadata
//! `tokenizer.chat_template`, or `chat_template` in a Hugging Face directory's
//! `tokenizer_config.json`), rendered with minijinja, a maintained Jinja2 engine (the
//! templates are Jinja written for Hugging Face's Python renderer; a hand-written subset
//! would break on the next model's template).
use super::gguf::{GgufFile, GgufValue};
use anyhow::{anyhow, bail, Context as _, Result};
use std::path::Path;

/// The chat template of the model at `path` (a .gguf file or a directory), if it has one.
pub fn find_template(path: &Path) -> Result<Option<String>> {
    if path.is_file() {
        if !super::is_gguf_name(path) {
            return find_template(path.parent().unwrap_or(Path::new(".")));
        }
        let file = GgufFile::open(path)?;
        return Ok(match file.metadata.get("tokenizer.chat_template") {
            Some(GgufValue::String(s)) => Some(s.clone()),
            Some(_) => bail!("{}: tokenizer.chat_template is not a string", path.display()),
            None => None,
        });
    }
    let config = path.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", config.display()))?;
    Ok(match &v["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        // a list of named templates: the one named "default"
        serde_json::Value::Array(list) => {
            list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(String::from)
        }
        _ => None,
    })
}

/// `template` rendered for one user message, with the assistant's turn opened
/// (`add_generation_prompt`), as Hugging Face's `apply_chat_template` renders it.
pub fn render_user_prompt(template: &str, user: &str, bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template).map_err(|e| anyhow!("the chat template does not parse: {e}"))?;
    let ctx = minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => user }],
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    };
    env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| anyhow!("rendering the chat template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template (its GGUF's `tokenizer.chat_template`), as written
    /// there: `\n` inside the Jinja string literals is an escape for Jinja to expand.
    const SMOLLM2: &str = r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_renders_as_jinja_does() {
        // written by hand from the template: the default system turn (the first message is
        // not a system one), the user turn, then the opened assistant turn
        let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                    <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(render_user_prompt(SMOLLM2, "What is 2+2?", "", "").unwrap(), want);
    }

    #[test]
    fn a_broken_template_is_a_clear_error() {
        let e = render_user_prompt("{% for m in messages %}", "x", "", "").unwrap_err().to_string();
        assert!(e.contains("chat template"), "{e}");
    }
}

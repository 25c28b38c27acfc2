//! Command-line glue: argument structs and the per-command drivers that parse, call one
//! library function and print.
pub mod env;
pub mod train;

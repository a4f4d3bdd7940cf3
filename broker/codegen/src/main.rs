//! `clacks-codegen`: turns the AMQP 0-10 spec XML into `broker/src/wire/generated.rs`.
//!
//! The spec is read where Debian's `amqp-specs` package installs it; it is never copied into
//! the repository. The output is deterministic (spec order) and rustfmt'd, so the freshness
//! test can compare it byte for byte with the committed file.
//!
//! Usage: `cargo run -p clacks-codegen [-- --spec PATH] [--check]`

use std::path::PathBuf;
use std::process::ExitCode;

use clacks_codegen::{generate, DEFAULT_SPEC, GENERATED_PATH, GENERATED_TESTS_PATH};

fn main() -> ExitCode {
    let mut spec = PathBuf::from(DEFAULT_SPEC);
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--spec" => match args.next() {
                Some(p) => spec = PathBuf::from(p),
                None => {
                    eprintln!("--spec needs a path");
                    return ExitCode::FAILURE;
                }
            },
            "--check" => check = true,
            other => {
                eprintln!(
                    "unknown argument {other}; usage: clacks-codegen [--spec PATH] [--check]"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let xml = match std::fs::read_to_string(&spec) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "cannot read {}: {e} (install Debian's amqp-specs package)",
                spec.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let generated = match generate(&xml) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("generation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut status = ExitCode::SUCCESS;
    for (path, code) in [
        (GENERATED_PATH, generated.code),
        (GENERATED_TESTS_PATH, generated.tests),
    ] {
        let out = crate_dir.join(path);
        if check {
            if std::fs::read_to_string(&out).unwrap_or_default() != code {
                eprintln!(
                    "{} is stale: run `cargo run -p clacks-codegen`",
                    out.display()
                );
                status = ExitCode::FAILURE;
            }
            continue;
        }
        if let Err(e) = std::fs::write(&out, code) {
            eprintln!("cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", out.display());
    }
    status
}

//! `clacks generate DIR`: the man pages (one for `clacks`, one per subcommand) and shell
//! completions, made from the CLI definitions so that they never drift from the binary.

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs};

/// Writes the man pages and completions into `args.out`.
///
/// # Errors
/// The directory cannot be made or written.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make {}", args.out.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.out)
        .with_context(|| format!("cannot write the man pages in {}", args.out.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "clacks", &args.out)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}

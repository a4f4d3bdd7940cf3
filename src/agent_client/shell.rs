//! `clacks shell`: commands typed at a prompt (line editing, history, completion of the
//! method names), or read line by line from a non-terminal stdin as a script.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use super::conn::{self, Target};
use super::listing::format_methods;
use super::params::{parse_shell_line, ShellLine};
use super::rpc::RpcClient;
use super::write_stdout;
use crate::cli::ShellArgs;

/// The prompt of the interactive shell.
const PROMPT: &str = "clacks> ";

/// Words the shell knows besides the methods.
const SHELL_WORDS: [&str; 3] = ["help", "exit", "quit"];

/// What one line did.
enum Step {
    /// Text to print on stdout (a result or a listing).
    Output(String),
    /// Nothing to print.
    Nothing,
    /// The user asked to leave.
    Exit,
}

/// `clacks shell`.
///
/// # Errors
/// Connection failures; in script mode the first line that fails.
pub async fn shell(args: ShellArgs) -> anyhow::Result<()> {
    let target = conn::resolve(&args.conn)?;
    let mut client = RpcClient::connect(&target, args.conn.timeout).await?;
    let outcome = if std::io::stdin().is_terminal() {
        interactive(&mut client, &target).await
    } else {
        script(&mut client).await
    };
    client.close().await;
    outcome
}

/// Runs one line.
async fn step(client: &mut RpcClient, line: &str) -> anyhow::Result<Step> {
    match parse_shell_line(line)? {
        ShellLine::Empty => Ok(Step::Nothing),
        ShellLine::Exit => Ok(Step::Exit),
        ShellLine::Help(target) => {
            let methods = client.call("getMethods", json!([])).await?;
            Ok(Step::Output(format_methods(&methods, target.as_deref())?))
        }
        ShellLine::Call { method, params } => {
            let result = client.call(&method, params).await?;
            Ok(Step::Output(format!(
                "{}\n",
                serde_json::to_string_pretty(&result)?
            )))
        }
    }
}

/// Script mode: each line of stdin in turn, stopping at the first failure.
async fn script(client: &mut RpcClient) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut number = 0usize;
    while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
        number += 1;
        match step(client, &line)
            .await
            .with_context(|| format!("line {number}: {}", line.trim()))?
        {
            Step::Output(text) => write_stdout(&text)?,
            Step::Nothing => {}
            Step::Exit => break,
        }
    }
    Ok(())
}

/// Interactive mode: a prompt until Ctrl-D or `exit`; errors are shown and the shell
/// goes on.
async fn interactive(client: &mut RpcClient, target: &Target) -> anyhow::Result<()> {
    let mut names: Vec<String> = SHELL_WORDS.iter().map(|w| w.to_string()).collect();
    match client.call("getMethods", json!([])).await {
        Ok(Value::Object(methods)) => names.extend(methods.keys().cloned()),
        Ok(_) => {}
        // The shell still works without completion.
        Err(e) => eprintln!("clacks: no method names to complete: {e}"),
    }
    names.sort();
    names.dedup();
    let mut editor: Editor<MethodNames, DefaultHistory> =
        Editor::new().context("cannot set up line editing")?;
    editor.set_helper(Some(MethodNames(names)));
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let history = conn::history_path(&var);
    if let Some(path) = &history {
        // A missing history file is the normal first run.
        let _ = editor.load_history(path);
    }
    println!("Connected to {}", target.shown);
    println!("Clacks infrastructure shell. Type help for the commands, Ctrl+D to exit.");
    loop {
        // Line editing blocks: it runs off the async workers, which keep the connection.
        let (back, read) = tokio::task::spawn_blocking(move || {
            let read = editor.readline(PROMPT);
            (editor, read)
        })
        .await
        .context("the line editor failed")?;
        editor = back;
        let line = match read {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the command line"),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
            save_history(&mut editor, history.as_ref());
        }
        match step(client, &line).await {
            Ok(Step::Output(text)) => write_stdout(&text)?,
            Ok(Step::Nothing) => {}
            Ok(Step::Exit) => break,
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    println!("Closing session");
    Ok(())
}

/// Writes the history, creating its directory; a failure is reported, not fatal.
fn save_history(editor: &mut Editor<MethodNames, DefaultHistory>, path: Option<&PathBuf>) {
    let Some(path) = path else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = editor.save_history(path) {
        eprintln!("clacks: cannot save the history to {}: {e}", path.display());
    }
}

/// Completes the first word of a line from the method names.
struct MethodNames(Vec<String>);

impl MethodNames {
    /// The names that start the word ending at `pos`, and where the word starts; nothing
    /// past the first word.
    fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = line.get(..pos).unwrap_or(line);
        let start = before.len() - before.trim_start().len();
        let word = &before[start..];
        if !word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return (pos, Vec::new());
        }
        let found = self
            .0
            .iter()
            .filter(|n| n.starts_with(word))
            .cloned()
            .collect();
        (start, found)
    }
}

impl Completer for MethodNames {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, names) = self.candidates(line, pos);
        Ok((
            start,
            names
                .into_iter()
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: n,
                })
                .collect(),
        ))
    }
}

impl Hinter for MethodNames {
    type Hint = String;
}

impl Highlighter for MethodNames {}

impl Validator for MethodNames {}

impl Helper for MethodNames {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_the_first_word_only() {
        let names = MethodNames(vec!["getMethods".into(), "getNodes".into(), "help".into()]);
        assert_eq!(
            names.candidates("  getN", 6),
            (2, vec!["getNodes".to_string()])
        );
        assert_eq!(names.candidates("get", 3).1.len(), 2);
        assert!(names.candidates("getNodes(get", 12).1.is_empty());
        assert!(names.candidates("getNodes get", 12).1.is_empty());
    }
}

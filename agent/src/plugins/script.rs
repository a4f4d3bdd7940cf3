//! Script plugins: an executable plus a small TOML manifest in the scripts directory
//! becomes a command, so admins extend an appliance without recompiling.
//!
//! `disk-free.toml` beside an executable `disk-free`:
//! ```toml
//! target = "tools"              # the command queue suffix
//! name = "diskFree"             # the command (default: the manifest's file stem)
//! params = ["path"]             # parameter names, in order
//! help = "Report the free space of a path."
//! # exec = "disk-free"          # the executable (default: the file stem)
//! # timeout_ms = 10000          # default: the agent's script timeout
//! # needs_user = true           # the caller's name goes in as "user"
//! ```
//! The arguments go to the script's stdin as one JSON object by parameter name; its
//! stdout is the result (JSON when it parses, else the trimmed text). A non-zero exit or
//! the time limit fails the call.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::jsonrpc::ErrorCode;
use crate::plugin::{BoxFuture, CallContext, CallResult, Plugin};
use crate::registry::{CommandInfo, CommandType};

/// The most a script may print on stdout; more fails the call.
const MAX_OUTPUT: u64 = 1024 * 1024;

/// A manifest as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    target: String,
    name: Option<String>,
    #[serde(default)]
    params: Vec<String>,
    help: String,
    exec: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    needs_user: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Why the scripts directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The directory or a manifest could not be read.
    #[error("cannot read {}: {err}", path.display())]
    Io {
        /// What failed.
        path: PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// A manifest is wrong; the text says how.
    #[error("script manifest {}: {why}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// One script command.
#[derive(Debug, Clone)]
struct Script {
    info: CommandInfo,
    params: Vec<String>,
    exec: PathBuf,
    timeout: Duration,
}

/// The scripts of one target.
pub struct ScriptPlugin {
    target: String,
    scripts: BTreeMap<String, Script>,
}

/// Reads every `*.toml` manifest in `dir` (file-name order) and returns one plugin per
/// target. `default_timeout` applies where a manifest sets none.
///
/// # Errors
/// An unreadable directory, a malformed manifest, a missing or non-executable program, a
/// command name used twice.
pub fn load(dir: &Path, default_timeout: Duration) -> Result<Vec<Arc<dyn Plugin>>, ScriptError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |err| ScriptError::Io { path, err }
    };
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            manifests.push(path);
        }
    }
    manifests.sort();
    let mut by_target: BTreeMap<String, ScriptPlugin> = BTreeMap::new();
    for path in manifests {
        let script = read_manifest(dir, &path, default_timeout)?;
        let bad = |why: String| ScriptError::Manifest {
            path: path.clone(),
            why,
        };
        if by_target
            .values()
            .any(|p| p.scripts.contains_key(&script.info.name))
        {
            return Err(bad(format!(
                "command {} is defined twice",
                script.info.name
            )));
        }
        by_target
            .entry(script.info.target.clone())
            .or_insert_with(|| ScriptPlugin {
                target: script.info.target.clone(),
                scripts: BTreeMap::new(),
            })
            .scripts
            .insert(script.info.name.clone(), script);
    }
    Ok(by_target
        .into_values()
        .map(|p| Arc::new(p) as Arc<dyn Plugin>)
        .collect())
}

fn read_manifest(
    dir: &Path,
    path: &Path,
    default_timeout: Duration,
) -> Result<Script, ScriptError> {
    let bad = |why: String| ScriptError::Manifest {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|err| ScriptError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    let m: Manifest = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| bad("the file name is not UTF-8".into()))?;
    let name = m.name.clone().unwrap_or_else(|| stem.to_string());
    let identifier = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if !identifier(&name) {
        return Err(bad(format!("command name {name:?} is not an identifier")));
    }
    if m.target.is_empty()
        || !m
            .target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad(format!(
            "target {:?} is not a queue name part",
            m.target
        )));
    }
    if let Some(p) = m.params.iter().find(|p| !identifier(p) || *p == "user") {
        return Err(bad(format!("parameter {p:?} is not allowed")));
    }
    if m.help.trim().is_empty() {
        return Err(bad("help must say what the command does".into()));
    }
    let kind = match &m.kind {
        None => CommandType::Normal,
        Some(k) => CommandType::from_wire(k).ok_or_else(|| bad(format!("unknown type {k:?}")))?,
    };
    let exec = dir.join(m.exec.as_deref().unwrap_or(stem));
    let mode = std::fs::metadata(&exec)
        .map_err(|e| bad(format!("program {}: {e}", exec.display())))?
        .permissions()
        .mode();
    if !exec.is_file() || mode & 0o111 == 0 {
        return Err(bad(format!("program {} is not executable", exec.display())));
    }
    let mut info = CommandInfo::new(&name, &m.target, "Script", &m.help);
    info.kind = kind;
    info.needs_user = m.needs_user;
    info.sig = m
        .needs_user
        .then(|| "user".to_string())
        .into_iter()
        .chain(m.params.iter().cloned())
        .collect();
    Ok(Script {
        info,
        params: m.params,
        exec,
        timeout: m.timeout_ms.map_or(default_timeout, Duration::from_millis),
    })
}

impl Plugin for ScriptPlugin {
    fn target(&self) -> &str {
        &self.target
    }

    fn commands(&self) -> Vec<CommandInfo> {
        self.scripts.values().map(|s| s.info.clone()).collect()
    }

    fn call<'a>(
        &'a self,
        ctx: &'a CallContext,
        method: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, CallResult> {
        Box::pin(async move {
            let Some(script) = self.scripts.get(method) else {
                return Err(ctx.report((ErrorCode::COMMAND_NOT_DEFINED, method.into())));
            };
            run(script, args)
                .await
                .map_err(|why| ctx.report((ErrorCode::COMMAND_FAILED, format!("{method}: {why}"))))
        })
    }
}

/// Runs the script with its arguments as JSON on stdin and reads its result.
async fn run(script: &Script, args: Vec<Value>) -> Result<Value, String> {
    let mut input = Map::new();
    let mut args = args.into_iter();
    if script.info.needs_user {
        input.insert("user".into(), args.next().unwrap_or(Value::Null));
    }
    for (name, value) in script.params.iter().zip(args) {
        input.insert(name.clone(), value);
    }
    let mut child = tokio::process::Command::new(&script.exec)
        .current_dir(script.exec.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timed-out script is killed when its handle goes.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", script.exec.display()))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the script's pipes are missing".into());
    };
    let body = Value::Object(input).to_string();
    let work = async {
        // A script that ignores its input may close stdin early: not an error.
        let _ = stdin.write_all(body.as_bytes()).await;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut limited_out = (&mut stdout).take(MAX_OUTPUT + 1);
        let mut limited_err = (&mut stderr).take(64 * 1024);
        let (read_out, _, status) = tokio::join!(
            limited_out.read_to_end(&mut out),
            limited_err.read_to_end(&mut err),
            child.wait()
        );
        read_out.map_err(|e| format!("reading its output: {e}"))?;
        let status = status.map_err(|e| format!("waiting for it: {e}"))?;
        Ok::<_, String>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(script.timeout, work)
        .await
        .map_err(|_| {
            format!(
                "no result within {} ms; stopped",
                script.timeout.as_millis()
            )
        })??;
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("failed ({status}): {last}"));
    }
    if out.len() as u64 > MAX_OUTPUT {
        return Err(format!("printed more than {MAX_OUTPUT} bytes"));
    }
    let text = String::from_utf8_lossy(&out);
    let text = text.trim();
    Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AgentAcl;
    use crate::events::SchemaSet;
    use crate::state::{AgentConfig, AgentState};
    use serde_json::json;

    fn script(dir: &Path, name: &str, manifest: &str, body: &str) {
        std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("manifest");
        let exec = dir.join(name);
        std::fs::write(&exec, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn ctx(plugins: Vec<Arc<dyn Plugin>>) -> CallContext {
        let state = AgentState::new(
            AgentConfig::new("org.clacks", "n1"),
            plugins,
            AgentAcl::default(),
            SchemaSet::load(None).expect("schemas"),
        );
        CallContext {
            user: Some("alice".into()),
            state: Arc::new(state),
            forwarded: false,
        }
    }

    #[tokio::test]
    async fn scripts_get_json_in_and_give_results_errors_and_time_limits_back() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        script(
            d,
            "echo",
            "target = \"tools\"\nparams = [\"a\", \"b\"]\nhelp = \"Echo.\"\nneeds_user = true",
            "cat",
        );
        script(
            d,
            "words",
            "target = \"tools\"\nname = \"sayHi\"\nhelp = \"Hi.\"",
            "echo hello there",
        );
        script(
            d,
            "fails",
            "target = \"more\"\nhelp = \"Fails.\"",
            "echo broken >&2; exit 3",
        );
        script(
            d,
            "slow",
            "target = \"more\"\nhelp = \"Slow.\"\ntimeout_ms = 200",
            "sleep 30",
        );
        let plugins = load(d, Duration::from_secs(5)).expect("load");
        assert_eq!(plugins.len(), 2, "one plugin per target");
        let tools = plugins
            .iter()
            .find(|p| p.target() == "tools")
            .expect("tools");
        let mut names: Vec<String> = tools.commands().into_iter().map(|c| c.name).collect();
        names.sort();
        assert_eq!(names, ["echo", "sayHi"]);
        let echo = tools
            .commands()
            .into_iter()
            .find(|c| c.name == "echo")
            .expect("echo");
        assert_eq!(echo.sig, ["user", "a", "b"]);
        let more = plugins
            .iter()
            .find(|p| p.target() == "more")
            .expect("more")
            .clone();
        let c = ctx(plugins.clone());

        let out = tools
            .call(
                &c,
                "echo",
                vec![json!("alice"), json!(1), json!({"x": [true]})],
            )
            .await;
        assert_eq!(
            out,
            Ok(json!({"user": "alice", "a": 1, "b": {"x": [true]}}))
        );
        assert_eq!(
            tools.call(&c, "sayHi", vec![]).await,
            Ok(json!("hello there"))
        );
        let err = more.call(&c, "fails", vec![]).await.expect_err("exit 3");
        assert!(
            err.contains("fails: failed (exit status: 3): broken"),
            "{err}"
        );
        let started = std::time::Instant::now();
        let err = more.call(&c, "slow", vec![]).await.expect_err("timeout");
        assert!(err.contains("no result within 200 ms"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the script was stopped"
        );
    }

    #[test]
    fn bad_manifests_are_refused_with_their_reason() {
        for (manifest, body, expected) in [
            ("target = \"t\"", "true", "missing field `help`"),
            (
                "target = \"t\"\nhelp = \"h\"\ncolour = 1",
                "true",
                "unknown field `colour`",
            ),
            (
                "target = \"a.b\"\nhelp = \"h\"",
                "true",
                "not a queue name part",
            ),
            (
                "target = \"t\"\nhelp = \"h\"\nparams = [\"user\"]",
                "true",
                "parameter \"user\"",
            ),
            (
                "target = \"t\"\nhelp = \"h\"\ntype = \"SOMETIMES\"",
                "true",
                "unknown type",
            ),
            (
                "target = \"t\"\nhelp = \"h\"\nexec = \"missing\"",
                "true",
                "program",
            ),
        ] {
            let dir = tempfile::tempdir().expect("dir");
            script(dir.path(), "s", manifest, body);
            let err = load(dir.path(), Duration::from_secs(1))
                .err()
                .expect("refused");
            assert!(err.to_string().contains(expected), "{manifest}: {err}");
        }
        let dir = tempfile::tempdir().expect("dir");
        script(
            dir.path(),
            "a",
            "target = \"t\"\nname = \"x\"\nhelp = \"h\"",
            "true",
        );
        script(
            dir.path(),
            "b",
            "target = \"u\"\nname = \"x\"\nhelp = \"h\"",
            "true",
        );
        let err = load(dir.path(), Duration::from_secs(1))
            .err()
            .expect("twice");
        assert!(err.to_string().contains("defined twice"), "{err}");
    }
}

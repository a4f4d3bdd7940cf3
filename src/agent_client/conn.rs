//! Where an agent client command connects: the URL from the flags, the environment or a
//! config file, the domain from the URL's path, and a password asked for on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clacks_agent::names::{valid_domain, DEFAULT_DOMAIN};
use clacks_broker::client::{ConnectOptions, Connection};

use crate::cli::AgentConnArgs;
use crate::config::ClientSettings;

/// The URL used when neither a flag, the environment nor a config file gives one.
pub const DEFAULT_URL: &str = "amqp://127.0.0.1:5672";

/// A resolved connection: broker options, the Clacks domain, and how to show it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Broker address, credentials and TLS.
    pub opts: ConnectOptions,
    /// The Clacks domain the commands and events live in.
    pub domain: String,
    /// The URL without its password, for messages.
    pub shown: String,
    /// A user was given without a password and none could be asked for.
    pub missing_password: bool,
}

/// What `resolve` reads from outside the flags (so tests can supply it).
pub struct Environment<'a> {
    /// Environment variables.
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// Asks for a password when stdin is a terminal; `None` when it is not.
    pub ask_password: &'a dyn Fn(&str) -> Option<anyhow::Result<String>>,
}

/// Resolves the flags with the process environment and, when stdin is a terminal, a
/// `Password: ` prompt.
///
/// # Errors
/// An unreadable config file, a URL or domain that does not parse, a failed prompt.
pub fn resolve(args: &AgentConnArgs) -> anyhow::Result<Target> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let ask = |_user: &str| -> Option<anyhow::Result<String>> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        Some(rpassword::prompt_password("Password: ").context("cannot read the password"))
    };
    resolve_in(
        args,
        &Environment {
            var: &var,
            ask_password: &ask,
        },
    )
}

/// [`resolve`] with the environment given.
///
/// # Errors
/// As [`resolve`].
pub fn resolve_in(args: &AgentConnArgs, env: &Environment<'_>) -> anyhow::Result<Target> {
    let config = match &args.config {
        Some(path) => client_settings(path)?,
        None => ClientSettings::default(),
    };
    let url = match args
        .url
        .clone()
        .or_else(|| (env.var)("CLACKS_URL"))
        .or_else(|| (env.var)("CLACKS_BROKER"))
    {
        Some(url) => url,
        None => config.url.unwrap_or_else(|| DEFAULT_URL.to_string()),
    };
    let (without_path, path_domain) = split_domain(&url);
    let mut opts = ConnectOptions::parse(without_path)?;
    let domain = match (&args.domain, path_domain) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.to_string(),
        (None, None) => config.domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_string()),
    };
    if !valid_domain(&domain) {
        bail!("{domain:?} is not a Clacks domain (dot-separated ASCII names, like org.clacks)");
    }
    crate::client_cmds::apply_login(&mut opts, &args.login);
    let mut missing_password = false;
    let password_mechanism = !matches!(
        opts.mechanism
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref(),
        Some("EXTERNAL" | "ANONYMOUS")
    );
    if let (Some(user), None, true) = (&opts.username, &opts.password, password_mechanism) {
        match (env.ask_password)(user) {
            Some(answer) => opts.password = Some(answer?),
            None => missing_password = true,
        }
    }
    let scheme = if opts.tls.is_some() { "amqps" } else { "amqp" };
    let user = opts
        .username
        .as_deref()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let shown = format!("{scheme}://{user}{}:{}/{domain}", opts.host, opts.port);
    Ok(Target {
        opts,
        domain,
        shown,
        missing_password,
    })
}

/// Splits `amqp://host:port/domain` into the URL without its path and the domain, if the
/// path is not empty.
pub fn split_domain(url: &str) -> (&str, Option<&str>) {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    match url[authority_start..].find('/') {
        Some(slash) => {
            let cut = authority_start + slash;
            let path = url[cut..].trim_matches('/');
            (&url[..cut], (!path.is_empty()).then_some(path))
        }
        None => (url, None),
    }
}

/// The `[client]` table of a TOML file; other tables are not looked at (they belong to
/// `serve`).
fn client_settings(path: &Path) -> anyhow::Result<ClientSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    match table.remove("client") {
        None => Ok(ClientSettings::default()),
        Some(client) => client
            .try_into()
            .with_context(|| format!("config file {}: [client]", path.display())),
    }
}

/// Opens the connection, explaining a failed login when no password could be asked for.
///
/// # Errors
/// Connection and login failures, with the URL.
pub async fn open(target: &Target) -> anyhow::Result<Connection> {
    match Connection::open(target.opts.clone()).await {
        Ok(conn) => Ok(conn),
        Err(e) if target.missing_password => Err(anyhow::Error::new(e).context(format!(
            "cannot connect to {} (the URL names user {:?} without a password and stdin is \
             not a terminal to ask for one: put it in the URL as user:password@)",
            target.shown,
            target.opts.username.as_deref().unwrap_or_default()
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot connect to {}", target.shown))),
    }
}

/// Where the shell keeps its history: `$XDG_STATE_HOME/clacks/history`, else
/// `~/.clacks_history`; `None` without either variable.
pub fn history_path(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(state) = var("XDG_STATE_HOME") {
        return Some(PathBuf::from(state).join("clacks").join("history"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".clacks_history"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(url: Option<&str>) -> AgentConnArgs {
        AgentConnArgs {
            url: url.map(str::to_string),
            config: None,
            domain: None,
            login: crate::cli::LoginArgs {
                sasl_mechanism: None,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
            },
            timeout: 30.0,
        }
    }

    fn resolve_with(
        args: &AgentConnArgs,
        vars: &[(&str, &str)],
        password: Option<&str>,
    ) -> anyhow::Result<Target> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = |k: &str| vars.get(k).cloned();
        let ask = |_: &str| password.map(|p| Ok(p.to_string()));
        resolve_in(
            args,
            &Environment {
                var: &var,
                ask_password: &ask,
            },
        )
    }

    #[test]
    fn the_path_is_the_domain() {
        assert_eq!(
            split_domain("amqp://u:p@h:1/net.example"),
            ("amqp://u:p@h:1", Some("net.example"))
        );
        assert_eq!(split_domain("amqp://h/"), ("amqp://h", None));
        assert_eq!(split_domain("h:5672"), ("h:5672", None));
        assert_eq!(split_domain("h:5672/x.y"), ("h:5672", Some("x.y")));
    }

    #[test]
    fn flag_then_environment_then_config_then_default() {
        let t = resolve_with(&args(None), &[], None).expect("default");
        assert_eq!((t.opts.host.as_str(), t.opts.port), ("127.0.0.1", 5672));
        assert_eq!(t.domain, "org.clacks");

        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"x\"\n[client]\nurl = \"amqp://cfg:1/from.config\"\n",
        )
        .expect("write");
        let mut a = args(None);
        a.config = Some(file);
        let t = resolve_with(&a, &[], None).expect("config");
        assert_eq!(
            (t.opts.host.as_str(), t.domain.as_str()),
            ("cfg", "from.config")
        );
        let t = resolve_with(&a, &[("CLACKS_BROKER", "old:2")], None).expect("broker env");
        assert_eq!(t.opts.host, "old");
        let t = resolve_with(
            &a,
            &[
                ("CLACKS_BROKER", "old:2"),
                ("CLACKS_URL", "amqp://new:3/n.d"),
            ],
            None,
        )
        .expect("url env");
        assert_eq!((t.opts.host.as_str(), t.domain.as_str()), ("new", "n.d"));
        a.url = Some("amqp://flag:4".into());
        a.domain = Some("over.ridden".into());
        let t = resolve_with(&a, &[("CLACKS_URL", "amqp://new:3/n.d")], None).expect("flag");
        assert_eq!((t.opts.host.as_str(), t.opts.port), ("flag", 4));
        assert_eq!(t.domain, "over.ridden");
        assert_eq!(t.shown, "amqp://flag:4/over.ridden");
    }

    #[test]
    fn the_config_file_gives_the_domain_and_is_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[client]\ndomain = \"net.example\"\n").expect("write");
        let mut a = args(Some("amqp://h"));
        a.config = Some(file.clone());
        assert_eq!(
            resolve_with(&a, &[], None).expect("domain").domain,
            "net.example"
        );
        std::fs::write(&file, "[client]\nurl = 5\n").expect("write");
        let err = resolve_with(&a, &[], None).expect_err("not a string");
        assert!(format!("{err:#}").contains("[client]"), "{err:#}");
        a.config = Some(dir.path().join("missing.toml"));
        let err = resolve_with(&a, &[], None).expect_err("missing");
        assert!(
            err.to_string().contains("cannot read the config file"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_password_is_asked_for_or_noted() {
        let a = args(Some("amqp://bob@h"));
        let t = resolve_with(&a, &[], Some("secret")).expect("asked");
        assert_eq!(t.opts.password.as_deref(), Some("secret"));
        assert!(!t.missing_password);
        let t = resolve_with(&a, &[], None).expect("not a terminal");
        assert!(t.opts.password.is_none() && t.missing_password);
        assert_eq!(t.shown, "amqp://bob@h:5672/org.clacks");
        let t = resolve_with(&args(Some("amqp://bob:pw@h")), &[], None).expect("given");
        assert_eq!(t.opts.password.as_deref(), Some("pw"));
    }

    #[test]
    fn bad_domains_are_refused() {
        let err =
            resolve_with(&args(Some("amqp://h/bad domain")), &[], None).expect_err("bad domain");
        assert!(err.to_string().contains("not a Clacks domain"), "{err}");
    }

    #[test]
    fn history_goes_to_the_state_dir_or_home() {
        let var = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        assert_eq!(
            history_path(&var),
            Some(PathBuf::from("/home/u/.clacks_history"))
        );
        let var = |k: &str| Some(format!("/{k}"));
        assert_eq!(
            history_path(&var),
            Some(PathBuf::from("/XDG_STATE_HOME/clacks/history"))
        );
    }
}

//! `clacks user`: local users in a stopped broker's data directory.

use std::io::BufRead;

use anyhow::{bail, Context};
use clacks_broker::auth::credentials::{random_password, Credentials};
use clacks_storage::{SledStore, Store, StoreOp, UserRecord};

use crate::cli::{UserArgs, UserCommand};

/// Runs one `clacks user` subcommand.
///
/// # Errors
/// A data directory in use (the broker is running) or unreadable; an unknown or existing
/// user; an empty password.
pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add(args) => set_password(&args, true),
        UserCommand::Passwd(args) => set_password(&args, false),
        UserCommand::Del(args) => {
            let store = open(&args.dir.data_dir)?;
            if !exists(&store, &args.name)? {
                bail!("no user {}", args.name);
            }
            store.apply(&[StoreOp::DeleteUser(args.name.clone())])?;
            println!("removed user {}", args.name);
            Ok(())
        }
        UserCommand::List(dir) => {
            let store = open(&dir.data_dir)?;
            let mut names: Vec<String> =
                store.recover()?.users.into_iter().map(|u| u.name).collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
            Ok(())
        }
    }
}

fn open(dir: &std::path::Path) -> anyhow::Result<SledStore> {
    SledStore::open(dir).with_context(|| {
        format!(
            "cannot open {} (users are managed while the broker is stopped)",
            dir.display()
        )
    })
}

fn exists(store: &SledStore, name: &str) -> anyhow::Result<bool> {
    Ok(store.recover()?.users.iter().any(|u| u.name == name))
}

fn set_password(args: &UserArgs, add: bool) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.contains(['@', ' ']) {
        bail!("user names are non-empty, without spaces or '@' (the realm is added)");
    }
    let store = open(&args.dir.data_dir)?;
    match (add, exists(&store, &args.name)?) {
        (true, true) => bail!(
            "user {} exists (use passwd to change the password)",
            args.name
        ),
        (false, false) => bail!("no user {}", args.name),
        _ => {}
    }
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let p = random_password(20)?;
        println!("password for {}: {p}", args.name);
        p
    };
    if password.is_empty() {
        bail!("empty passwords are not allowed");
    }
    let credentials = Credentials::from_password(&password)?;
    store.apply(&[StoreOp::PutUser(UserRecord {
        name: args.name.clone(),
        credentials: credentials.encode(),
    })])?;
    println!(
        "{} user {}",
        if add { "added" } else { "updated" },
        args.name
    );
    Ok(())
}

//! The Debian package as cargo-deb builds it (from the test build, so that CI builds once):
//! its control data, its files, a unit that `systemd-analyze verify` accepts, man pages and
//! completions generated from the CLI, and the packaged binary started with the packaged
//! config, telling a service manager (a real `NOTIFY_SOCKET`) when it is ready and when
//! it stops.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package from the binary under test; its path.
fn build_deb(out: &Path) -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_clacks"));
    let profile_dir = binary.parent().expect("profile dir");
    let target = profile_dir.parent().expect("target dir");
    let generated = profile_dir.join("generated");
    let _ = std::fs::remove_dir_all(&generated);
    run(Command::new(binary).arg("generate").arg(&generated));
    let pages: Vec<PathBuf> = std::fs::read_dir(&generated)
        .expect("generated")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    assert!(pages.len() > 10, "a man page per subcommand: {pages:?}");
    run(Command::new("gzip").arg("-9nf").args(&pages));
    let deb = out.join("clacks.deb");
    run(Command::new("cargo")
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "--output",
        ])
        .arg(&deb)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target));
    deb
}

#[test]
fn the_debian_package_installs_a_hardened_notifying_service() {
    let work = tempfile::tempdir().expect("dir");
    let deb = build_deb(work.path());

    let control = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(control.contains("Package: clacks"), "{control}");
    assert!(control.contains("adduser"), "depends on adduser: {control}");
    let scripts = work.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&scripts));
    let conffiles = std::fs::read_to_string(scripts.join("conffiles")).expect("conffiles");
    assert!(conffiles.contains("/etc/clacks/clacks.toml"), "{conffiles}");
    for script in ["postinst", "postrm", "prerm"] {
        run(Command::new("sh").arg("-n").arg(scripts.join(script)));
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("systemctl") || postinst.contains("deb-systemd"),
        "{postinst}"
    );

    let root = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    for file in [
        "usr/bin/clacks",
        "etc/clacks/clacks.toml",
        "usr/lib/systemd/system/clacks.service",
        "usr/share/man/man1/clacks.1.gz",
        "usr/share/man/man1/clacks-serve.1.gz",
        "usr/share/bash-completion/completions/clacks",
        "usr/share/zsh/vendor-completions/_clacks",
        "usr/share/fish/vendor_completions.d/clacks.fish",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the package");
    }

    // The unit: readiness by notification, its own user, hardened; systemd accepts it.
    let unit_path = root.join("usr/lib/systemd/system/clacks.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    for line in [
        "Type=notify",
        "User=clacks",
        "StateDirectory=clacks",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    let packaged = root.join("usr/bin/clacks");
    let checked = work.path().join("clacks.service");
    std::fs::write(
        &checked,
        unit.replace("/usr/bin/clacks", &packaged.display().to_string()),
    )
    .expect("unit copy");
    run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&checked));

    // Man pages and completions come from the CLI definitions.
    let page = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/clacks-serve.1.gz")));
    assert!(page.contains(".TH clacks-serve 1"), "{page}");
    assert!(page.contains("config"), "the flags are documented");
    let bash = root.join("usr/share/bash-completion/completions/clacks");
    let complete = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p clacks", bash.display())));
    assert!(complete.contains("clacks"), "{complete}");

    // The packaged binary with the packaged config (data and ports moved for the test)
    // reports READY=1 once it listens, and STOPPING=1 on SIGTERM.
    let socket_path = work.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let data = work.path().join("data");
    let mut child = Command::new(&packaged)
        .arg("serve")
        .arg("--config")
        .arg(root.join("etc/clacks/clacks.toml"))
        .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the packaged binary");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 from the service");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains("STATUS=listening on 127.0.0.1:"),
        "{ready:?}"
    );
    assert!(
        data.join("sled").is_dir(),
        "the state is where the config says"
    );
    run(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string()));
    let n = socket.recv(&mut buf).expect("STOPPING=1 from the service");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
    let status = child.wait().expect("exit");
    assert!(status.success(), "a clean stop: {status}");
}

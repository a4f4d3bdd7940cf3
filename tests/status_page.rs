//! The status page in a real browser: headless Chromium, driven through chromedriver.
//! A wrong password is refused; an admin logs in; messages published with a real client
//! show as the queue's depth on the page without a reload. A screenshot of the page is
//! kept as a test artifact (its path is printed).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clacks_broker::client::Message;
use clacks_broker::wire::QueueDeclare;
use common::{guest_session, Binary};
use fantoccini::{Client, ClientBuilder, Locator};

const DEADLINE: Duration = Duration::from_secs(30);
const QUEUE: &str = "page-q";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; tests/run.sh installs it)");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1600"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session")
}

/// Polls until `check` holds for the text of the element at `css`; that text.
async fn until_text(page: &Client, css: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        if let Ok(e) = page.find(Locator::Css(css)).await {
            if let Ok(text) = e.text().await {
                if check(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(Instant::now() < deadline, "{css}: still {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(page: &Client, user: &str, password: &str) {
    for (field, value) in [("#user", user), ("#password", password)] {
        let input = page.find(Locator::Css(field)).await.expect(field);
        input.clear().await.expect("clear");
        input.send_keys(value).await.expect("type");
    }
    page.find(Locator::Css("#submit"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_the_queue_depth_change_without_a_reload() {
    let b = Binary::start("[http]\nlisten = \"127.0.0.1:0\"\n[agent]\nadmins = [\"guest\"]\n");
    let http = b
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("listening (http) on "))
        .expect("an HTTP listener")
        .trim()
        .to_string();
    let (_conn, s) = guest_session(&b).await;
    s.declare_queue(QueueDeclare {
        queue: Some(QUEUE.into()),
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");

    let driver = Driver::start();
    let page = browser(&driver).await;
    page.goto(&format!("http://{http}/")).await.expect("open");

    // A wrong password: refused, and the figures stay hidden.
    until_text(&page, "#login h2", |t| t == "Log in").await;
    log_in(&page, "guest", "not-the-password").await;
    until_text(&page, "#login-error", |t| t.contains("Login failed")).await;
    let hidden = page
        .find(Locator::Css("#status"))
        .await
        .expect("#status")
        .attr("hidden")
        .await
        .expect("attr");
    assert!(hidden.is_some(), "the status shows without a login");

    log_in(&page, "guest", "guest").await;
    let depth = format!("tr[data-queue=\"{QUEUE}\"] td.depth");
    until_text(&page, &depth, |t| t == "0").await;
    until_text(&page, "#who", |t| t.contains("guest")).await;

    // Published with a real client: the page follows by itself.
    for i in 0..7 {
        s.send("", Message::new(format!("m{i}")).with_routing_key(QUEUE))
            .await
            .expect("send");
    }
    until_text(&page, &depth, |t| t == "7").await;
    // Our own connection is listed with its user.
    until_text(&page, "#connections tbody", |t| t.contains("guest")).await;

    let png = page.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, png).expect("keep the screenshot");
    println!("screenshot: {}", path.display());
    page.close().await.expect("close the browser");
}

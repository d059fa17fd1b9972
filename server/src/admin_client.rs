//! `zonestore admin`: a small HTTP/1.1 client for a running server's admin API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `zonestore admin` arguments.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server's admin address (`admin:` in `zonestore serve`'s output).
    #[arg(long, default_value = "127.0.0.1:9001", env = "ZONESTORE_ADMIN")]
    server: String,
    /// The admin token (by default read from the file `admin-token` in --data).
    #[arg(long, env = "ZONESTORE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data directory, which holds its admin token.
    #[arg(long, default_value = "zonestore-data", env = "ZONESTORE_DATA")]
    data: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Every zone of every drive: state, write pointer, valid bytes.
    Zones,
    /// Engine counters: bytes written, write amplification, failovers, free zones.
    Stats,
    /// Garbage collection: status, start, stop, run.
    Gc {
        #[command(subcommand)]
        action: Option<GcAction>,
    },
    /// Each target's state, live bytes, and what is under-replicated.
    Targets,
    /// Move every record off a target (so that it can be removed), showing progress.
    Drain {
        /// The target's NQN (or drive name, as `targets` shows it).
        target: String,
    },
    /// Stop draining a target: it takes new writes again.
    Undrain {
        /// The target's NQN (or drive name, as `targets` shows it).
        target: String,
    },
    /// Read and check every copy of every record now, repairing bad copies; shows the result.
    Scrub,
}

#[derive(Subcommand, Debug)]
enum GcAction {
    /// Show GC status (the default).
    Status,
    /// Let background GC run.
    Start,
    /// Stop background GC after the zone in progress.
    Stop,
    /// Collect zones now, whatever the watermarks, showing progress.
    Run {
        /// How many zones (per pass, the best victim of each drive is collected).
        #[arg(long, default_value_t = 1)]
        zones: usize,
    },
}

/// Where the admin API is and how to authenticate to it.
struct AdminApi {
    address: String,
    token: Option<String>,
}

impl AdminApi {
    /// The address, and the token from `--token` or the data directory (none if neither has
    /// one: the server then says what it needs).
    fn from_args(args: &AdminArgs) -> anyhow::Result<AdminApi> {
        let token = match &args.token {
            Some(token) => Some(token.trim().to_string()),
            None => {
                let path = zonestore::serve::admin_token_path(&args.data);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(text.trim().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", path.display()));
                    }
                }
            }
        };
        // The token goes into a header line: one with a line break or another control
        // character in it would end that line and add headers of its own.
        if let Some(t) = &token
            && !zonestore::serve::is_token_text(t)
        {
            anyhow::bail!(
                "the admin token must be printable ASCII without spaces (as `zonestore serve` writes it)"
            );
        }
        Ok(AdminApi {
            address: admin_address(&args.server)?,
            token,
        })
    }
}

/// The HOST:PORT of `--server`, which may also be given as the URL `zonestore serve` prints
/// (`http://HOST:PORT`).
fn admin_address(server: &str) -> anyhow::Result<String> {
    let server = server.trim();
    if server
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        anyhow::bail!("--server {server}: the admin API is plain HTTP; give HOST:PORT");
    }
    let address = match server.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &server[7..],
        _ => server,
    };
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.is_empty() || address.contains(['/', '?', '#', ' ']) {
        anyhow::bail!(
            "--server {server}: give the admin API's HOST:PORT (as `zonestore serve` prints after `admin:`)"
        );
    }
    Ok(address.to_string())
}

/// Columns after a target's name in a row of `/admin/targets`.
const TARGET_COLUMNS: usize = 6;

/// A row of `/admin/targets` as the target's name and the columns after it (STATE, LINK,
/// LIVE, ...). The columns come from the right: a name (a drive's path) may hold spaces.
fn target_row(line: &str) -> Option<(&str, Vec<&str>)> {
    let mut rest = line.trim_end();
    let mut columns = Vec::with_capacity(TARGET_COLUMNS);
    for _ in 0..TARGET_COLUMNS {
        let cut = rest.rfind(char::is_whitespace)?;
        columns.push(rest[cut..].trim_start());
        rest = rest[..cut].trim_end();
    }
    columns.reverse();
    (!rest.is_empty()).then_some((rest, columns))
}

/// An answer from the admin API.
struct Answer {
    status: u16,
    body: String,
}

async fn request(server: &AdminApi, method: &str, path: &str) -> anyhow::Result<Answer> {
    let address = server.address.as_str();
    let mut stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
        .await
        .with_context(|| format!("connecting to {address}: timed out"))?
        .with_context(|| format!("connecting to {address} (is `zonestore serve` running, and is this its admin address?)"))?;
    let authorization = server
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .context("sending the request")?;
    // Answers are tables and JSON of a few megabytes at most: a peer sending more than this
    // is not the admin API.
    const MAX_ANSWER: u64 = 256 << 20;
    let mut raw = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(120),
        (&mut stream).take(MAX_ANSWER + 1).read_to_end(&mut raw),
    )
    .await
    .context("waiting for the answer: timed out")?
    .context("reading the answer")?;
    if raw.len() as u64 > MAX_ANSWER {
        anyhow::bail!(
            "the answer from {address} is over {MAX_ANSWER} bytes: is this the admin API?"
        );
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the answer is not HTTP")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the answer has no HTTP status")?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// [`request`], failing on an error status (with what the server said).
async fn fetch(server: &AdminApi, method: &str, path: &str) -> anyhow::Result<Answer> {
    let answer = request(server, method, path).await?;
    if answer.status >= 400 {
        bail!(
            "the server answered {}: {}",
            answer.status,
            answer.body.trim()
        );
    }
    Ok(answer)
}

async fn show(server: &AdminApi, method: &str, path: &str) -> anyhow::Result<()> {
    let answer = request(server, method, path).await?;
    write_out(&answer.body);
    if answer.status >= 400 {
        bail!("the server answered {}", answer.status);
    }
    Ok(())
}

/// Runs an admin command.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let api = AdminApi::from_args(&args)?;
    let server = &api;
    match args.command {
        AdminCommand::Zones => show(server, "GET", "/admin/zones").await,
        AdminCommand::Stats => show(server, "GET", "/admin/stats").await,
        AdminCommand::Targets => show(server, "GET", "/admin/targets").await,
        AdminCommand::Drain { target } => drain(server, &target).await,
        AdminCommand::Undrain { target } => {
            let path = format!("/admin/undrain?target={}", percent_encode(&target));
            show(server, "POST", &path).await
        }
        AdminCommand::Scrub => scrub(server).await,
        AdminCommand::Gc { action } => match action.unwrap_or(GcAction::Status) {
            GcAction::Status => show(server, "GET", "/admin/gc").await,
            GcAction::Start => show(server, "POST", "/admin/gc/start").await,
            GcAction::Stop => show(server, "POST", "/admin/gc/stop").await,
            GcAction::Run { zones } => gc_run(server, zones).await,
        },
    }
}

/// Starts a GC run and follows it until it ends, printing progress.
async fn gc_run(server: &AdminApi, zones: usize) -> anyhow::Result<()> {
    let started = request(server, "POST", &format!("/admin/gc/run?zones={zones}")).await?;
    if started.status >= 400 {
        write_out(&started.body);
        bail!("the server answered {}", started.status);
    }
    let mut last = String::new();
    loop {
        let answer = fetch(server, "GET", "/admin/gc").await?;
        let Some(run_line) = answer.body.lines().find(|l| l.starts_with("run ")) else {
            // A server that restarted since has no run to show: following it would never end.
            bail!("the server shows no GC run any more (did it restart?)");
        };
        let run_line = run_line.to_string();
        if run_line != last {
            say_err!("{}", run_line.trim_start_matches("run").trim());
            last = run_line.clone();
        }
        if run_line.contains("finished") {
            write_out(&answer.body);
            if answer.body.lines().any(|l| l.starts_with("run error")) {
                bail!("the GC run ended with an error");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn field(body: &str, prefix: &str) -> String {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or("")
        .trim_start_matches(prefix)
        .trim()
        .to_string()
}

/// Starts draining `target` and follows it until nothing is left to move.
async fn drain(server: &AdminApi, target: &str) -> anyhow::Result<()> {
    let path = format!("/admin/drain?target={}", percent_encode(target));
    let started = request(server, "POST", &path).await?;
    if started.status >= 400 {
        write_out(&started.body);
        bail!("the server answered {}", started.status);
    }
    let mut last = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answer = fetch(server, "GET", "/admin/targets").await?;
        let left = field(&answer.body, "draining:");
        if left != last {
            say_err!("draining {target}: {left}");
            last = left.clone();
        }
        // The target's row (NAME STATE LINK LIVE ...): its whole name, or the end of it after
        // a colon, as the server takes it.
        let suffix = format!(":{target}");
        let rows: Vec<(&str, Vec<&str>)> = answer
            .body
            .lines()
            .filter_map(target_row)
            .filter(|(name, _)| *name == target || name.ends_with(&suffix))
            .collect();
        let [(_, columns)] = rows.as_slice() else {
            write_out(&answer.body);
            bail!("the server lists {} targets named {target}", rows.len());
        };
        // Drained as the server sees it: nothing left there, nothing on its way there.
        match columns.first().copied() {
            Some("drained") => {
                write_out(&answer.body);
                return Ok(());
            }
            Some("draining") => {}
            state => {
                write_out(&answer.body);
                bail!(
                    "{target} is {} now, not draining (undrained, or removed?)",
                    state.unwrap_or("?")
                );
            }
        }
        if let Some(why) = answer.body.lines().find(|l| l.starts_with("repair waits:")) {
            say_err!("{why}");
        }
    }
}

/// Starts a scrub pass and waits for it to finish.
async fn scrub(server: &AdminApi) -> anyhow::Result<()> {
    let before = fetch(server, "GET", "/admin/scrub").await?;
    let passes = |body: &str| -> u64 {
        field(body, "scrub:")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let start = passes(&before.body);
    // A pass under way when asked is not the one asked for: that one runs after it.
    let running = field(&before.body, "scrub:").contains("(running)");
    let done_at = start + 1 + u64::from(running);
    // A pass that fails is not counted (and is tried again a minute later): a failure new
    // since the request (its line names how many there were), or one met after a pass was
    // seen running, ends the wait.
    let failure = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("scrub failed:"))
            .map(str::to_string)
    };
    let failed_before = failure(&before.body);
    let mut seen_running = false;
    fetch(server, "POST", "/admin/scrub").await?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fetch(server, "GET", "/admin/scrub").await?;
        let running_now = field(&now.body, "scrub:").contains("(running)");
        seen_running |= running_now;
        let failed_now = failure(&now.body);
        if !running_now && failed_now.is_some() && (failed_now != failed_before || seen_running) {
            write_out(&now.body);
            bail!("the scrub pass stopped short");
        }
        let passes_now = passes(&now.body);
        if passes_now < start {
            bail!(
                "the server restarted during the scrub (its pass count began again): run it again"
            );
        }
        if passes_now >= done_at {
            write_out(&now.body);
            if now.body.lines().any(|l| l.starts_with("scrub failed:")) {
                bail!("the scrub pass stopped short");
            }
            return Ok(());
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes `text` to standard output. A reader that went away (`zonestore admin zones | head`)
/// is no error, and no panic as `print!` would make of it.
fn write_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_row_is_read_from_the_right() {
        let row = format!(
            "{:<44} {:<8} {:<9} {:>10} {:>9} {:>8} {:>10}",
            "zns-file:///srv/my drives/drive 0", "draining", "local", "0B", 0, 0, 0
        );
        let (name, columns) = target_row(&row).unwrap();
        assert_eq!(name, "zns-file:///srv/my drives/drive 0");
        assert_eq!(columns, ["draining", "local", "0B", "0", "0", "0"]);
        assert!(target_row("under-replicated: 0B in 0 records").is_none());
    }

    #[test]
    fn the_admin_address_may_be_the_url_serve_prints() {
        assert_eq!(admin_address("127.0.0.1:9001").unwrap(), "127.0.0.1:9001");
        assert_eq!(
            admin_address("http://127.0.0.1:9001").unwrap(),
            "127.0.0.1:9001"
        );
        assert_eq!(admin_address("HTTP://[::1]:9001/").unwrap(), "[::1]:9001");
        for bad in ["https://127.0.0.1:9001", "http://h:1/admin", "", "http://"] {
            assert!(admin_address(bad).is_err(), "{bad}");
        }
    }
}

//! The admin HTTP API, served on its own port: Prometheus `/metrics`, `/health`, `/ready`, and
//! `/admin/...` for `zonestore admin` (zones, stats, GC control with progress, targets). Answers
//! are plain-text tables meant for people; the metrics are for machines.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fabric::host::NvmeTcpHost;
use fabric::target::Target;
use parking_lot::Mutex;
use serde::Deserialize;
use zns::ReportFilter;

use crate::engine::Engine;
use crate::engine::placement::ZoneUse;
use crate::metrics::Metrics;
use crate::size::human;

/// Progress of an admin-started GC run.
#[derive(Debug, Clone, Default)]
pub struct GcJob {
    /// Zones asked for.
    pub total: usize,
    /// Zones collected so far.
    pub done: usize,
    /// Whether the job has ended.
    pub finished: bool,
    /// Why it ended early, if it did.
    pub error: Option<String>,
}

/// What the admin API works on.
pub struct AdminState {
    /// The token `/admin/...` requests must carry (`Authorization: Bearer TOKEN`).
    pub token: String,
    /// The engine.
    pub engine: Engine,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// NVMe/TCP connections, by drive name.
    pub hosts: Vec<(String, NvmeTcpHost)>,
    /// Embedded NVMe/TCP targets, by NQN.
    pub targets: Vec<(String, Target)>,
    /// The current or last GC run started from the admin API.
    pub gc_job: Mutex<Option<GcJob>>,
    /// The task running it, until shutdown waits for it.
    pub gc_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set when the server begins to shut down: `/ready` answers 503 from then on (while the
    /// S3 requests in flight drain and the engine stops).
    pub stopping: std::sync::atomic::AtomicBool,
    /// The last `/metrics` rendering and when it began (see [`metrics`]).
    pub last_scrape: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl AdminState {
    /// Ends the jobs started from the admin API before the engine shuts down: a GC run stops
    /// after the zone it is collecting, and is waited for as the engine's own tasks are (a run
    /// stuck on a drive that answers nothing is abandoned after the same bound, not left
    /// running while the drives are flushed and closed).
    pub async fn stop_jobs(&self) {
        if let Some(job) = self.gc_job.lock().as_mut() {
            job.total = job.done;
        }
        let task = self.gc_task.lock().take();
        if let Some(task) = task {
            crate::engine::stop_task("the GC run started from the admin API", task).await;
        }
    }
}

/// Marks the admin GC run finished however its task ends (a panic included): a run that never
/// ended would refuse every later one.
struct GcJobEnd {
    state: Arc<AdminState>,
    error: Option<String>,
}

impl Drop for GcJobEnd {
    fn drop(&mut self) {
        if let Some(j) = self.state.gc_job.lock().as_mut() {
            j.finished = true;
            j.error = self
                .error
                .take()
                .or_else(|| std::thread::panicking().then(|| "the GC run failed".into()));
        }
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// The admin router: `/health`, `/ready` and `/metrics` for anyone who can reach the port (load
/// balancers, Prometheus), `/admin/...` only with the token.
pub fn router(state: Arc<AdminState>) -> Router {
    let admin = Router::new()
        .route("/admin/zones", get(zones))
        .route("/admin/stats", get(stats))
        .route("/admin/gc", get(gc_status))
        .route("/admin/gc/start", post(gc_start))
        .route("/admin/gc/stop", post(gc_stop))
        .route("/admin/gc/run", post(gc_run))
        .route("/admin/targets", get(targets))
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain))
        .route("/admin/scrub", get(scrub_status).post(scrub_start))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(admin)
        .with_state(state)
}

/// The admin API's routes, served from the moment its port is bound: until the server has its
/// engine (drives attaching, a crash's tail replayed, which can take a while), `/health` answers
/// (the process lives, so a liveness probe must not kill it) and everything else is 503
/// "starting"; then [`AdminRoutes::set`] puts the full router in place.
#[derive(Clone, Default)]
pub struct AdminRoutes(Arc<std::sync::RwLock<Option<Router>>>);

impl AdminRoutes {
    /// Serves `router` from now on.
    pub fn set(&self, router: Router) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(router);
    }

    /// The router to serve: the full one once set, the start-up answers before.
    pub fn router(&self) -> Router {
        let routes = self.clone();
        Router::new().fallback(move |request: Request| {
            let routes = routes.clone();
            async move { routes.serve(request).await }
        })
    }

    async fn serve(&self, request: Request) -> Response {
        let current = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match current {
            Some(router) => match tower::ServiceExt::oneshot(router, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            None if request.uri().path() == "/health" => text(StatusCode::OK, "ok\n".into()),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: drives attaching and the index opening\n".into(),
            ),
        }
    }
}

/// Lets through only requests that carry the admin token.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    // 401 with the scheme to use (RFC 9110 §15.5.2), and an invalid_token error for a wrong
    // token (RFC 6750 §3.1).
    let refused = |challenge: &'static str, why: &str| {
        let mut response = text(StatusCode::UNAUTHORIZED, why.to_string());
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
        response
    };
    match given {
        None => refused(
            "Bearer realm=\"zonestore-admin\"",
            "the admin API needs the server's admin token (Authorization: Bearer TOKEN): \
             `zonestore admin` reads it from the server's data directory (--data DIR, file \
             admin-token) or takes --token\n",
        ),
        Some(token) if !same_secret(token.as_bytes(), state.token.as_bytes()) => refused(
            "Bearer realm=\"zonestore-admin\", error=\"invalid_token\"",
            "wrong admin token\n",
        ),
        Some(_) => next.run(request).await,
    }
}

/// The token of an `Authorization: Bearer TOKEN` value (an authentication scheme's name is
/// case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [("content-type", "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    if s.stopping.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: stopping\n".into(),
        );
    }
    // Writes go only to drives that are up and not being drained.
    let up = s
        .engine
        .drives()
        .all()
        .iter()
        .filter(|d| d.is_writable())
        .count();
    let needed = s.engine.inner().quorum();
    if up >= needed {
        text(
            StatusCode::OK,
            format!(
                "ready: {up} of {} drives take writes, {needed} needed\n",
                s.engine.drives().len()
            ),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {up} of {} drives take writes, {needed} needed\n",
                s.engine.drives().len()
            ),
        )
    }
}

/// `/metrics`: rendered on a blocking thread (it reads every zone of every drive), one
/// rendering at a time; scrapes that wait meanwhile take the next rendering to begin after
/// they came, so that a flood of them costs one rendering at a time and holds no runtime
/// thread, and none reads figures older than itself.
async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let asked = std::time::Instant::now();
    // In a task of its own: a scrape whose client goes away (its handler dropped) still keeps
    // the rendering it began, so that the next scrape takes it rather than begin another.
    let rendering = tokio::spawn(async move {
        let mut last = s.last_scrape.lock().await;
        if let Some((began, text)) = &*last
            && *began >= asked
        {
            return Ok(text.clone());
        }
        let began = std::time::Instant::now();
        let state = s.clone();
        let text = tokio::task::spawn_blocking(move || {
            state
                .metrics
                .render(&state.engine, &state.hosts, &state.targets)
        })
        .await?;
        *last = Some((began, text.clone()));
        Ok::<_, tokio::task::JoinError>(text)
    });
    let body = match rendering.await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) | Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering the metrics failed: {e}\n"),
            );
        }
    };
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn use_name(usage: ZoneUse) -> &'static str {
    match usage {
        ZoneUse::Free => "free",
        ZoneUse::Active(crate::engine::model::Class::User) => "open-user",
        ZoneUse::Active(crate::engine::model::Class::Gc) => "open-gc",
        ZoneUse::Closing => "closing",
        ZoneUse::Sealed => "sealed",
        ZoneUse::Collecting => "collecting",
        ZoneUse::Bad => "bad",
    }
}

async fn zones(State(s): State<Arc<AdminState>>) -> Response {
    let rows = s.engine.zone_table();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:>5} {:<10} {:>10} {:>10} {:>10} {:>6} {:<10}",
        "DRIVE", "ZONE", "STATE", "WP", "VALID", "CAPACITY", "RESETS", "USE"
    );
    for drive in s.engine.drives().all() {
        // The drive's own view of each zone (state and write pointer), next to the engine's.
        let report = drive
            .device
            .report_zones(0, ReportFilter::All, drive.geometry.zone_count as usize)
            .await;
        let report = match report {
            Ok(r) => Some(r),
            Err(e) => {
                let _ = writeln!(out, "{:<44} unreachable: {e}", drive.name);
                None
            }
        };
        for row in rows.iter().filter(|r| r.drive == drive.name) {
            let (state, wp) = match report.as_ref().and_then(|r| r.zones.get(row.zone as usize)) {
                Some(z) if z.wp != u64::MAX => (
                    z.state.name().to_string(),
                    match drive.written_blocks(row.zone, z) {
                        Ok(blocks) => human(blocks * drive.block_size()),
                        Err(_) => format!("bad wp {}", z.wp),
                    },
                ),
                Some(z) => (z.state.name().to_string(), "-".to_string()),
                None => ("?".to_string(), human(row.written_bytes)),
            };
            let _ = writeln!(
                out,
                "{:<44} {:>5} {:<10} {:>10} {:>10} {:>10} {:>6} {:<10}",
                drive.name,
                row.zone,
                state,
                wp,
                human(row.valid_bytes),
                human(row.capacity_bytes),
                row.generation,
                use_name(row.usage)
            );
        }
    }
    text(StatusCode::OK, out)
}

async fn stats(State(s): State<Arc<AdminState>>) -> Response {
    let st = s.engine.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let gc = s.engine.gc().status();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "objects written (bytes)   {}",
        human(load(&st.user_bytes))
    );
    let _ = writeln!(out, "puts                      {}", load(&st.puts));
    let _ = writeln!(
        out,
        "user appends (all copies) {}",
        human(load(&st.user_written))
    );
    let _ = writeln!(
        out,
        "gc appends                {}",
        human(load(&st.gc_written))
    );
    let _ = writeln!(
        out,
        "repair appends            {}",
        human(load(&st.repair_written))
    );
    let _ = writeln!(
        out,
        "write amplification       {:.3}",
        st.write_amplification()
    );
    let _ = writeln!(out, "zones reset               {}", load(&st.zones_reset));
    let _ = writeln!(
        out,
        "records relocated         {}",
        load(&st.records_relocated)
    );
    let _ = writeln!(
        out,
        "gc bytes relocated        {}",
        human(gc.bytes_relocated)
    );
    let _ = writeln!(
        out,
        "read failovers            {}",
        load(&st.read_failovers)
    );
    let _ = writeln!(out, "read hedges               {}", load(&st.read_hedges));
    let _ = writeln!(out, "crc errors                {}", load(&st.crc_errors));
    let _ = writeln!(
        out,
        "under-replicated writes   {}",
        load(&st.under_replicated_writes)
    );
    let _ = writeln!(
        out,
        "stale uploads aborted     {}",
        load(&st.uploads_expired)
    );
    let slow_writes: u64 = s
        .engine
        .drives()
        .all()
        .iter()
        .map(|d| load(&d.slow_writes_total))
        .sum();
    let _ = writeln!(out, "slow writes not waited    {slow_writes}");
    for (drive, free, total) in s.engine.free_zones() {
        let _ = writeln!(out, "free zones {drive:<40} {free}/{total}");
    }
    text(StatusCode::OK, out)
}

fn gc_text(s: &AdminState) -> String {
    let g = s.engine.gc().status();
    let mut out = String::new();
    let _ = writeln!(out, "enabled         {}", g.enabled);
    let _ = writeln!(out, "busy            {}", g.busy);
    let _ = writeln!(out, "policy          {:?}", g.policy);
    let _ = writeln!(out, "zones collected {}", g.zones_collected);
    let _ = writeln!(out, "bytes relocated {}", human(g.bytes_relocated));
    let _ = writeln!(
        out,
        "write amp.      {:.3}",
        s.engine.stats().write_amplification()
    );
    if let Some(e) = &g.last_error {
        let _ = writeln!(out, "last error      {e}");
    }
    if let Some(job) = &*s.gc_job.lock() {
        let state = if job.finished { "finished" } else { "running" };
        let _ = writeln!(
            out,
            "run             {state}: {}/{} zones",
            job.done, job.total
        );
        if let Some(e) = &job.error {
            let _ = writeln!(out, "run error       {e}");
        }
    }
    out
}

async fn gc_status(State(s): State<Arc<AdminState>>) -> Response {
    text(StatusCode::OK, gc_text(&s))
}

async fn gc_start(State(s): State<Arc<AdminState>>) -> Response {
    s.engine.gc().start();
    text(StatusCode::OK, gc_text(&s))
}

async fn gc_stop(State(s): State<Arc<AdminState>>) -> Response {
    s.engine.gc().stop();
    text(StatusCode::OK, gc_text(&s))
}

/// `POST /admin/gc/run?zones=N`.
#[derive(Debug, Deserialize)]
struct RunQuery {
    zones: Option<usize>,
}

async fn gc_run(State(s): State<Arc<AdminState>>, Query(q): Query<RunQuery>) -> Response {
    let total = match q.zones {
        None => 1,
        Some(n @ 1..=1_048_576) => n,
        Some(n) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("zones must be between 1 and 1048576, not {n}\n"),
            );
        }
    };
    let started = {
        let mut job = s.gc_job.lock();
        if job.as_ref().is_some_and(|j| !j.finished) {
            false
        } else {
            *job = Some(GcJob {
                total,
                ..GcJob::default()
            });
            true
        }
    };
    if !started {
        // The job's lock is released first: the status text takes it again.
        return text(
            StatusCode::CONFLICT,
            format!("a GC run is already in progress\n{}", gc_text(&s)),
        );
    }
    let state = s.clone();
    let task = tokio::spawn(async move {
        let inner = state.engine.inner().clone();
        let mut end = GcJobEnd {
            state: state.clone(),
            error: None,
        };
        while state
            .gc_job
            .lock()
            .as_ref()
            .is_some_and(|j| j.done < j.total)
        {
            match inner.collect_now().await {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(j) = state.gc_job.lock().as_mut() {
                        j.done = (j.done + n).min(j.total);
                    }
                }
                Err(e) => {
                    end.error = Some(e.to_string());
                    break;
                }
            }
        }
    });
    *s.gc_task.lock() = Some(task);
    text(StatusCode::ACCEPTED, gc_text(&s))
}

async fn targets(State(s): State<Arc<AdminState>>) -> Response {
    let mut out = String::new();
    let live = s.engine.live_bytes();
    let _ = writeln!(
        out,
        "{:<44} {:<8} {:<9} {:>10} {:>9} {:>8} {:>10}",
        "TARGET", "STATE", "LINK", "LIVE", "IN-FLIGHT", "ERRORS", "RECONNECTS"
    );
    for drive in s.engine.drives().all() {
        let host = s
            .hosts
            .iter()
            .find(|(name, _)| *name == drive.name)
            .map(|(_, h)| h);
        let link = match host {
            Some(h) if h.is_connected() => "connected",
            Some(_) => "lost",
            None => "local",
        };
        let state = if drive.removed {
            "removed"
        } else if s.engine.drained(drive) {
            "drained"
        } else if drive.draining.load(Ordering::Relaxed) {
            "draining"
        } else if drive.foreign.load(Ordering::Relaxed)
            || host.is_some_and(|h| h.finds_another_drive())
        {
            "foreign"
        } else if drive.is_up() {
            "up"
        } else {
            "down"
        };
        let reconnects = host.map_or(0, |h| h.stats().reconnects.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "{:<44} {:<8} {:<9} {:>10} {:>9} {:>8} {:>10}",
            drive.name,
            state,
            link,
            human(live.get(usize::from(drive.id)).copied().unwrap_or(0)),
            drive.in_flight.load(Ordering::Relaxed),
            drive.errors.load(Ordering::Relaxed),
            reconnects
        );
    }
    out.push_str(&repair_text(&s));
    text(StatusCode::OK, out)
}

fn repair_text(s: &AdminState) -> String {
    let r = s.engine.repair().status();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "under-replicated: {} in {} records (replication factor {}, write quorum {})",
        human(r.under_replicated_bytes),
        r.under_replicated_records,
        s.engine.inner().replicas(),
        s.engine.inner().quorum()
    );
    let _ = writeln!(
        out,
        "draining:         {} still to move",
        human(r.draining_bytes)
    );
    let _ = writeln!(
        out,
        "repair:           {} copies made ({}), {} dropped, {} passes, last rate {:.1} MiB/s",
        r.copies_made,
        human(r.bytes_copied),
        r.copies_dropped,
        r.passes,
        r.last_rate / f64::from(1 << 20)
    );
    if let Some(why) = &r.blocked {
        let _ = writeln!(out, "repair waits:     {why}");
    }
    let _ = writeln!(
        out,
        "scrub:            {} passes{}, {} copies checked ({}), {} bad, {} repaired",
        r.scrub_passes,
        if r.scrub_running { " (running)" } else { "" },
        r.scrub_checked,
        human(r.scrub_bytes),
        r.scrub_bad,
        r.scrub_repaired
    );
    if let Some(ended) = r.scrub_last_end_ms {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ended);
        let _ = writeln!(out, "last scrub ended: {}", s3api::time::iso8601(when));
    }
    if let Some(why) = &r.scrub_failure {
        let _ = writeln!(
            out,
            "scrub failed:     {why} (failure {})",
            r.scrub_failures
        );
    }
    out
}

/// `POST /admin/drain?target=NAME`.
#[derive(Debug, Deserialize)]
struct DrainQuery {
    target: String,
}

async fn drain(State(s): State<Arc<AdminState>>, Query(q): Query<DrainQuery>) -> Response {
    match s.engine.drain(&q.target).await {
        Ok(()) => text(
            StatusCode::ACCEPTED,
            format!("draining {}\n{}", q.target, repair_text(&s)),
        ),
        Err(e) => text(
            error_status(&e),
            format!("cannot drain {}: {e}\n", q.target),
        ),
    }
}

/// The HTTP status for an engine error an admin request met: the request's fault (400), the
/// drives' state (503), or the server's (500).
fn error_status(e: &crate::engine::EngineError) -> StatusCode {
    use crate::engine::EngineError as E;
    match e {
        E::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        E::Unavailable(_) | E::NoSpace(_) | E::Drive { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `POST /admin/undrain?target=NAME`.
async fn undrain(State(s): State<Arc<AdminState>>, Query(q): Query<DrainQuery>) -> Response {
    match s.engine.undrain(&q.target).await {
        Ok(()) => text(
            StatusCode::OK,
            format!("{} takes writes again\n{}", q.target, repair_text(&s)),
        ),
        Err(e) => text(
            error_status(&e),
            format!("cannot undrain {}: {e}\n", q.target),
        ),
    }
}

async fn scrub_start(State(s): State<Arc<AdminState>>) -> Response {
    s.engine.repair().scrub();
    text(StatusCode::ACCEPTED, repair_text(&s))
}

async fn scrub_status(State(s): State<Arc<AdminState>>) -> Response {
    text(StatusCode::OK, repair_text(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn answer(router: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = tower::ServiceExt::oneshot(router.clone(), request)
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn the_bearer_scheme_is_named_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token(" BEARER   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer  "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[tokio::test]
    async fn health_answers_while_starting_and_the_full_routes_take_over() {
        let routes = AdminRoutes::default();
        let served = routes.router();
        assert_eq!(answer(&served, "/health").await.0, StatusCode::OK);
        let (status, body) = answer(&served, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("starting"), "{body}");
        assert_eq!(
            answer(&served, "/admin/zones").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        routes.set(Router::new().route("/ready", get(|| async { "ready\n" })));
        assert_eq!(
            answer(&served, "/ready").await,
            (StatusCode::OK, "ready\n".to_string())
        );
        assert_eq!(answer(&served, "/health").await.0, StatusCode::NOT_FOUND);
    }
}

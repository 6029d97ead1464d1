//! The daemon path: `tryswap serve` on a temp state dir, reloads over its Unix socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::process::Child;

use crate::setup::{self, Bins};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `tryswap serve`.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

/// One HTTP/1.1 request over the Unix socket: (status, body).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, String), String> {
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake on {}: {e}", socket.display()))?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| format!("building {method} {path}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"))?
}

impl Daemon {
    /// Starts `tryswap serve` for `slots` in `dir` and waits (≤ 20 s) until it answers.
    pub async fn start(bins: &Bins, dir: &Path, slots: &[String]) -> Result<Daemon, String> {
        let bin = bins
            .tryswap
            .clone()
            .ok_or("the tryswap binary is not built")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let state = dir.join("state");
        let config = dir.join("tryswap.toml");
        std::fs::write(&config, setup::config_toml(&state, slots))
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let log = std::fs::File::create(dir.join("serve.log")).map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("TRYSWAP_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawning tryswap serve: {e}"))?;
        let daemon = Daemon {
            child,
            socket: state.join("tryswap.sock"),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = request(&daemon.socket, "GET", "/healthz", None).await {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(daemon.dir.join("serve.log")).unwrap_or_default();
                daemon.stop().await;
                return Err(format!(
                    "tryswap serve did not answer /healthz within 20 s; log: {log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// One reload of `slot` to a new fixture config: wall time and the reload's JSON.
    pub async fn reload(
        &self,
        bins: &Bins,
        slot: &str,
        n: usize,
    ) -> Result<(Duration, Value), String> {
        let config = setup::fixture_config(&self.dir, &format!("{slot}-daemon{n}"));
        let body = json!({
            "artifact": bins.fixture.to_string_lossy(),
            "config_file": config.to_string_lossy(),
        });
        let path = format!("/v1/slots/{slot}/reloads");
        let t = Instant::now();
        let (status, text) = request(&self.socket, "POST", &path, Some(body)).await?;
        let mut json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("POST {path}: {status}, body is not JSON ({e}): {text}"))?;
        if status == 202 {
            // Accepted: poll the reload until it is done (bounded).
            let id = json["reload_id"].as_str().unwrap_or_default().to_owned();
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            loop {
                let (_, text) =
                    request(&self.socket, "GET", &format!("/v1/reloads/{id}"), None).await?;
                json = serde_json::from_str(&text)
                    .map_err(|e| format!("GET /v1/reloads/{id}: {e}"))?;
                if json["outcome"] != "in_progress" && !json["outcome"].is_null() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "reload {id} still in progress after {REQUEST_TIMEOUT:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else if status != 200 {
            return Err(format!("POST {path}: {status}: {text}"));
        }
        let wall = t.elapsed();
        if json["outcome"] != "active" {
            return Err(format!("daemon reload: {json}"));
        }
        Ok((wall, json))
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 10 s). The generations it ran keep
    /// running, as designed; the caller's `TempState` kills them.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        // Plugins outlive their host by design: the caller's TempState kills them.
    }
}

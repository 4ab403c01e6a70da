//! One Chrome DevTools Protocol session with a node process's inspector:
//! the debuggee found through the inspector's HTTP listing (`/json/list`),
//! then one call at a time over its WebSocket. Replies are bounded in size
//! and in nesting before they are parsed.

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tungstenite::{protocol::WebSocketConfig, Message, WebSocket};

/// Largest reply taken (a sampling profile of a big service is a few MiB).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Deepest JSON nesting taken: V8 records at most 128 frames per sample,
/// two levels each in the profile's tree, under a few of the reply's own.
const MAX_NESTING: usize = 270;

pub struct Session {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    /// Longest a call may take, replies and events together.
    timeout: Duration,
}

#[derive(serde::Deserialize)]
struct Debuggee {
    #[serde(rename = "webSocketDebuggerUrl")]
    url: Option<String>,
}

impl Session {
    /// Connects to the inspector listening on 127.0.0.1:`port` (in this
    /// thread's network namespace). Connecting, and every call, take at most `timeout`.
    pub fn connect(port: u16, timeout: Duration) -> Result<Self> {
        // Straight to the port: no proxy from the environment, no redirect elsewhere.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .proxy(None)
            .max_redirects(0)
            .build()
            .into();
        let listing: Vec<Debuggee> = agent
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .and_then(|mut r| r.body_mut().read_json())
            .with_context(|| format!("reading the inspector's listing at 127.0.0.1:{port}"))?;
        let url = listing.into_iter().find_map(|d| d.url).context("the inspector lists no debuggee")?;
        if !url.starts_with(&format!("ws://127.0.0.1:{port}/")) {
            bail!("the inspector at 127.0.0.1:{port} lists a debuggee elsewhere ({url})");
        }
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES));
        let (socket, _) = tungstenite::client::client_with_config(url.as_str(), stream, Some(config))
            .map_err(|e| anyhow::anyhow!("the WebSocket handshake with {url}: {e}"))?;
        Ok(Self { socket, next_id: 1, timeout })
    }

    /// From now on, each call takes at most `timeout`.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Calls `method` and returns its result; events that arrive meanwhile are dropped.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.exchange(method, params, self.timeout, |_| Ok(()))
    }

    /// Calls `method`, collecting the `chunk` of every `event` that arrives
    /// before its reply (a heap snapshot's `HeapProfiler.addHeapSnapshotChunk`);
    /// fails past `max_bytes` of them or `timeout` in all.
    pub fn call_collecting(
        &mut self,
        method: &str,
        params: Value,
        event: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<String> {
        let mut collected = String::new();
        self.exchange(method, params, timeout, |message| {
            if message["method"] == event {
                let chunk = message["params"]["chunk"].as_str().unwrap_or_default();
                if collected.len() + chunk.len() > max_bytes {
                    bail!("{method} sent more than {} MiB", max_bytes >> 20);
                }
                collected.push_str(chunk);
            }
            Ok(())
        })?;
        Ok(collected)
    }

    /// Sends `method`, hands every other message to `on_message` until its
    /// reply, and returns the reply's result; at most `timeout` in all.
    fn exchange(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
        mut on_message: impl FnMut(&Value) -> Result<()>,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::text(request.to_string())).with_context(|| format!("sending {method}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no reply to {method} within {timeout:?}");
            }
            self.socket.get_ref().set_read_timeout(Some(left))?;
            let text =
                match self.socket.read().with_context(|| format!("waiting for the reply to {method}"))? {
                    Message::Text(text) => text,
                    Message::Close(_) => bail!("the inspector closed the connection during {method}"),
                    _ => continue,
                };
            let mut reply = parse_bounded(text.as_str()).with_context(|| format!("the reply to {method}"))?;
            if reply["id"].as_u64() != Some(id) {
                on_message(&reply)?;
                continue;
            }
            if let Some(error) = reply.get("error") {
                bail!("{method}: {}", error["message"].as_str().unwrap_or("failed"));
            }
            return Ok(reply["result"].take());
        }
    }

    /// Evaluates `expression` in the target's main context, with the
    /// console's command-line API (`require`), and returns its value (a
    /// promise's, once it settles).
    pub fn evaluate(&mut self, expression: &str) -> Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "includeCommandLineAPI": true, "returnByValue": true,
                    "awaitPromise": true, "silent": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            let text = exception["exception"]["description"].as_str().or(exception["text"].as_str());
            bail!("evaluating in the target: {}", text.unwrap_or("exception"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Sends `method` without waiting for the reply (the inspector may close first).
    pub fn notify(&mut self, method: &str, params: Value) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        Ok(self.socket.send(Message::text(request.to_string()))?)
    }

    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}

/// Parses JSON no deeper than [`MAX_NESTING`] (checked before parsing, so
/// deep input cannot exhaust the stack).
pub fn parse_bounded(text: &str) -> Result<Value> {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        bail!("nested {deepest} levels deep (at most {MAX_NESTING} are read)");
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.disable_recursion_limit();
    Ok(serde::Deserialize::deserialize(&mut deserializer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_bounded_before_parsing() {
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert!(parse_bounded(&deep).unwrap_err().to_string().contains("300 levels"));
        let fine = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_bounded(&fine).is_ok());
        // Brackets inside strings are text.
        let quoted = format!("{{\"a\":\"{}\\\"\"}}", "[".repeat(1000));
        assert!(parse_bounded(&quoted).is_ok());
    }
}

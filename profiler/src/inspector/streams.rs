//! Who created a file stream (`fs.createReadStream`, `fs.createWriteStream`).
//! Node opens a stream's file a tick after creating it (`process.nextTick(constructNT,
//! stream)`, all JS): no native code runs where the stream is created, so
//! no probe sees that JS, and the fd's stack ends in node's
//! `processTicksAndRejections`. With the inspector open (`--lens
//! js-heap`), `process.nextTick` is wrapped for the recording: when node
//! defers a stream's construction, the wrapper keeps the creating JS stack
//! (V8's, as `Error.captureStackTrace` gives it) until the stream's `open`
//! event gives its fd, then holds `(fd, when, path, stack)` for the next
//! reading (fds whose path is the stream's). Every other `nextTick` pays
//! one comparison. The wrapper is turned off and node's `process.nextTick`
//! put back at the end.

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::stacks::v8::JsFunction;

/// Most creators held in the target between two readings (the rest are counted).
pub const MAX_HELD: usize = 4096;

/// Installs the wrapper (once); evaluates to `true`. Node's `constructNT`
/// is learnt from a stream made for it, so that every other tick pays one
/// identity comparison. Nothing the wrapper does for itself can fail the
/// program's call: it is guarded, the program's `Error.prepareStackTrace`
/// is set aside while the stack is taken, and once `active` is false
/// (uninstalled, even under another wrapper the program added since) it
/// only passes calls on.
pub const INSTALL: &str = r#"(() => {
  'use strict';
  const key = Symbol.for('leakprof.stream-creators');
  if (globalThis[key]) return true;
  const { resolve } = require('path');
  const { Readable } = require('stream');
  const original = process.nextTick;
  const state = { original, wrapper: null, active: true, fresh: [], dropped: 0 };
  let constructNT = null;
  let learning = true;
  function keepCreator(stream) {
    if (!stream || typeof stream.once !== 'function' || typeof stream.path !== 'string') return;
    const limit = Error.stackTraceLimit;
    const prepare = Error.prepareStackTrace;
    let stack;
    try {
      Error.stackTraceLimit = 32;
      Error.prepareStackTrace = undefined;
      const holder = {};
      Error.captureStackTrace(holder, nextTick);
      stack = String(holder.stack);
    } finally {
      Error.stackTraceLimit = limit;
      Error.prepareStackTrace = prepare;
    }
    const path = resolve(stream.path);
    stream.once('open', (fd) => {
      if (!state.active) return;
      if (state.fresh.length >= MAX_HELD) { state.dropped++; return; }
      state.fresh.push({ fd, at: String(process.hrtime.bigint()), path, stack });
    });
  }
  function nextTick(callback, a, b, c) {
    if (state.active) {
      try {
        if (callback === constructNT) keepCreator(a);
        else if (learning && typeof callback === 'function' && callback.name === 'constructNT') constructNT = callback;
      } catch {
        state.dropped++;
      }
    }
    switch (arguments.length) {
      case 1: return original(callback);
      case 2: return original(callback, a);
      case 3: return original(callback, a, b);
      case 4: return original(callback, a, b, c);
      default: return Reflect.apply(original, this, arguments);
    }
  }
  state.wrapper = nextTick;
  Object.defineProperty(globalThis, key, { value: state, configurable: true, enumerable: false });
  try {
    process.nextTick = nextTick;
    new Readable({ construct(done) { done(); }, read() {} });
  } catch (error) {
    state.active = false;
    if (process.nextTick === nextTick) process.nextTick = original;
    delete globalThis[key];
    throw error;
  }
  learning = false;
  return constructNT !== null;
})()"#;

/// Takes what the wrapper holds: `{ creators: [...], dropped }`.
pub const TAKE: &str = r#"(() => {
  const state = globalThis[Symbol.for('leakprof.stream-creators')];
  if (!state) return { creators: [], dropped: 0 };
  const taken = { creators: state.fresh, dropped: state.dropped };
  state.fresh = [];
  state.dropped = 0;
  return taken;
})()"#;

/// Turns the wrapper off and puts node's `process.nextTick` back (unless
/// the program replaced it since: then the wrapper stays in its chain,
/// passing calls on).
pub const UNINSTALL: &str = r#"(() => {
  const key = Symbol.for('leakprof.stream-creators');
  const state = globalThis[key];
  if (!state) return false;
  state.active = false;
  state.fresh = [];
  if (process.nextTick === state.wrapper) process.nextTick = state.original;
  delete globalThis[key];
  return true;
})()"#;

/// The install expression with its bound filled in.
pub fn install_expression() -> String {
    INSTALL.replace("MAX_HELD", &MAX_HELD.to_string())
}

/// A file stream's fd and the JS that created the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCreator {
    pub fd: u64,
    /// When node reported the stream open (`process.hrtime`: CLOCK_MONOTONIC, ns).
    pub opened_by_ns: u64,
    /// The stream's path, resolved against node's working directory.
    pub path: String,
    /// Innermost first: node's stream internals, then the caller of `createReadStream`.
    pub frames: Vec<JsFunction>,
}

#[derive(Deserialize)]
struct Taken {
    creators: Vec<RawCreator>,
    dropped: u64,
}

#[derive(Deserialize)]
struct RawCreator {
    fd: u64,
    at: String,
    path: String,
    stack: String,
}

/// Parses [`TAKE`]'s value: the creators, and how many were not kept
/// (not held by the target, or with no time or no frame read).
pub fn parse(value: serde_json::Value) -> Result<(Vec<StreamCreator>, u64)> {
    let taken: Taken = serde_json::from_value(value).context("stream creators")?;
    let read = taken.creators.len();
    let creators: Vec<StreamCreator> = taken
        .creators
        .into_iter()
        .filter_map(|c| {
            let frames: Vec<JsFunction> = c.stack.lines().filter_map(frame).collect();
            (!frames.is_empty()).then_some(())?;
            Some(StreamCreator { fd: c.fd, opened_by_ns: c.at.parse().ok()?, path: c.path, frames })
        })
        .collect();
    let unreadable = (read - creators.len()) as u64;
    Ok((creators, taken.dropped + unreadable))
}

/// One line of a V8 stack trace (`    at name (url:line:column)`, `    at
/// url:line:column`, `    at new Name (...)`, `    at async name (...)`,
/// `    at Receiver.method [as alias] (...)`) as the V8 heap reader names the
/// function: the function's own name, its script, line and column.
fn frame(line: &str) -> Option<JsFunction> {
    let rest = line.trim().strip_prefix("at ")?;
    let (name, location) = match rest.strip_suffix(')').and_then(|r| r.rsplit_once(" (")) {
        Some((name, location)) => (name, location),
        None => ("", rest),
    };
    let (location, column) = location.rsplit_once(':')?;
    let (script, line) = location.rsplit_once(':')?;
    let name = name.trim_start_matches("async ").trim_start_matches("new ");
    let name = name.split(" [as ").next().unwrap_or_default();
    let name = name.rsplit('.').next().unwrap_or_default();
    let name = if name == "<anonymous>" { "" } else { name };
    Some(JsFunction {
        name: name.to_string(),
        script: script.to_string(),
        line: line.parse().ok()?,
        column: column.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, script: &str, line: u32, column: u32) -> JsFunction {
        JsFunction { name: name.into(), script: script.into(), line, column }
    }

    #[test]
    fn stack_lines_name_functions_as_the_heap_reader_does() {
        let stack = "Error\n    at construct (node:internal/streams/destroy:253:11)\n    at new ReadStream (node:internal/fs/streams:183:3)\n    at Object.createReadStream (node:fs:3016:10)\n    at openReport (/srv/app/streams.js:9:40)\n    at async Server.<anonymous> (/srv/app/server.js:20:5)\n    at /srv/app/server.js:31:7\n    at Socket.onData [as ondata] (/srv/app/net.js:4:1)\n    at <anonymous>";
        let frames: Vec<JsFunction> = stack.lines().filter_map(frame).collect();
        assert_eq!(
            frames,
            [
                function("construct", "node:internal/streams/destroy", 253, 11),
                function("ReadStream", "node:internal/fs/streams", 183, 3),
                function("createReadStream", "node:fs", 3016, 10),
                function("openReport", "/srv/app/streams.js", 9, 40),
                function("", "/srv/app/server.js", 20, 5),
                function("", "/srv/app/server.js", 31, 7),
                function("onData", "/srv/app/net.js", 4, 1),
            ]
        );
        assert_eq!(frames[3].label(), "JS:openReport /srv/app/streams.js:9:40");
    }

    #[test]
    fn taken_creators_are_parsed_and_bad_ones_skipped() {
        let value = serde_json::json!({
            "creators": [
                { "fd": 21, "at": "123456789", "path": "/srv/app/a.log", "stack": "Error\n    at f (/srv/app/x.js:1:2)" },
                { "fd": 22, "at": "not a time", "path": "/srv/app/b.log", "stack": "" },
            ],
            "dropped": 3,
        });
        let (creators, dropped) = parse(value).unwrap();
        assert_eq!(dropped, 3 + 1, "the one without a time or a frame counts too");
        assert_eq!(
            creators,
            [StreamCreator {
                fd: 21,
                opened_by_ns: 123456789,
                path: "/srv/app/a.log".into(),
                frames: vec![function("f", "/srv/app/x.js", 1, 2)],
            }]
        );
        assert!(!install_expression().contains("MAX_HELD"));
    }
}

//! The resource kind: what an outstanding item is. One type from the kernel
//! event (`From<HandleKind>`) through the ledger, every renderer, the gate
//! and the JSON (serde writes the kebab-case name). A kind's unit, class and
//! nouns are methods here, so adding a kind is a change the compiler walks
//! you through (every `match` below), plus `Kind::ALL`.

use std::fmt;

use profiler_common::HandleKind;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Blocks from the malloc family.
    Heap,
    /// Anonymous `mmap` ranges.
    Mmap,
    /// File-backed `mmap` ranges (libraries, mapped files).
    FileMmap,
    /// Growth of the program break.
    Brk,
    /// Pages made resident (first-touch page faults), by the touching stack.
    Resident,
    /// Live JS objects, sampled by V8's sampling heap profiler (`--lens js-heap`).
    JsHeap,
    /// Open socket fds.
    Sockets,
    /// Open files (including memfd).
    Files,
    /// Open pipe ends.
    Pipes,
    /// eventfd, timerfd, signalfd, epoll, inotify, pidfd and io_uring fds.
    Events,
}

/// Whether a kind is measured in bytes or in open handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Memory,
    Handle,
}

impl Kind {
    /// Every kind, in the order reports list them.
    pub const ALL: [Kind; 10] = [
        Kind::Heap,
        Kind::Resident,
        Kind::JsHeap,
        Kind::Mmap,
        Kind::FileMmap,
        Kind::Brk,
        Kind::Sockets,
        Kind::Files,
        Kind::Pipes,
        Kind::Events,
    ];

    /// The name in reports, file names, the gate's TOML and the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Mmap => "mmap",
            Kind::FileMmap => "file-mmap",
            Kind::Brk => "brk",
            Kind::Resident => "resident",
            Kind::JsHeap => "js-heap",
            Kind::Sockets => "sockets",
            Kind::Files => "files",
            Kind::Pipes => "pipes",
            Kind::Events => "events",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub const fn class(self) -> Class {
        match self {
            Kind::Heap | Kind::Mmap | Kind::FileMmap | Kind::Brk | Kind::Resident | Kind::JsHeap => {
                Class::Memory
            }
            Kind::Sockets | Kind::Files | Kind::Pipes | Kind::Events => Class::Handle,
        }
    }

    /// Memory kinds are measured in bytes.
    pub const fn is_memory(self) -> bool {
        matches!(self.class(), Class::Memory)
    }

    /// Handle kinds are measured in open handles.
    pub const fn is_handle(self) -> bool {
        matches!(self.class(), Class::Handle)
    }

    /// What a budget or value of this kind counts.
    pub const fn unit(self) -> &'static str {
        match self.class() {
            Class::Memory => "bytes",
            Class::Handle => "handles",
        }
    }

    /// What `count` items of this kind are called (`3 blocks`, `1 page`).
    pub fn items(self, count: u64) -> &'static str {
        let (one, many) = match self {
            Kind::Heap | Kind::Brk => ("block", "blocks"),
            Kind::Resident => ("page", "pages"),
            Kind::JsHeap => ("sampled object", "sampled objects"),
            Kind::Mmap | Kind::FileMmap => ("mapping", "mappings"),
            Kind::Sockets => ("socket", "sockets"),
            Kind::Files => ("file", "files"),
            Kind::Pipes => ("pipe", "pipes"),
            Kind::Events => ("event fd", "event fds"),
        };
        if count == 1 {
            one
        } else {
            many
        }
    }
}

impl From<HandleKind> for Kind {
    fn from(h: HandleKind) -> Kind {
        match h {
            HandleKind::Socket => Kind::Sockets,
            HandleKind::File => Kind::Files,
            HandleKind::Pipe => Kind::Pipes,
            HandleKind::Event => Kind::Events,
        }
    }
}

/// Ordered by name, so maps keyed by kind list them as the JSON always has.
impl Ord for Kind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kind {s:?} (kinds: {})", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
        }
        assert!("heaps".parse::<Kind>().unwrap_err().contains("file-mmap"));
    }

    #[test]
    fn ordered_by_name() {
        let mut kinds = Kind::ALL.to_vec();
        kinds.sort();
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}

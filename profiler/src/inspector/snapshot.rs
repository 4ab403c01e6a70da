//! V8 heap snapshots (`--heap-snapshot`) and their comparison, as DevTools'
//! comparison view shows it: the objects of each class that are new since
//! the first snapshot and those gone, by count and bytes, and for the
//! classes that grew the most, the path that retains their new objects,
//! from the GC roots down (`SyncService.processedRecords -> Set.table ->
//! (object elements)[] -> (string)`).
//!
//! The snapshot is V8's JSON (`HeapProfiler.takeHeapSnapshot`): flat arrays
//! of node and edge fields described by the snapshot's own `meta`.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::report::model::{ClassGrowth, HeapSnapshotComparison};

/// Largest snapshot taken (its JSON), the bound on what the target sends.
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 30;
/// Largest object size taken (V8's largest objects are far smaller): sums
/// of sizes then cannot overflow.
const MAX_OBJECT_BYTES: u64 = 1 << 40;
/// Classes listed per comparison, most grown first.
const CLASSES_SHOWN: usize = 10;
/// Retaining paths shown (the classes that grew most by bytes).
const PATHS_SHOWN: usize = 5;
/// New objects of a class whose paths are compared (spread over all of them).
const PATH_SAMPLES: usize = 32;
/// Steps of a retaining path kept (the ones nearest the object).
const PATH_STEPS: usize = 10;

#[derive(Deserialize)]
struct Raw {
    snapshot: RawHeader,
    nodes: Vec<u64>,
    edges: Vec<u64>,
    strings: Vec<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    meta: Meta,
}

#[derive(Deserialize)]
struct Meta {
    node_fields: Vec<String>,
    node_types: Vec<serde_json::Value>,
    edge_fields: Vec<String>,
    edge_types: Vec<serde_json::Value>,
}

/// A heap snapshot's object graph.
pub struct HeapGraph {
    /// Per node: its class (an index into `classes`), id, self size and
    /// the index of its first outgoing edge (edges of node `i` are
    /// `first_edge[i]..first_edge[i + 1]`).
    class: Vec<u32>,
    id: Vec<u64>,
    size: Vec<u64>,
    first_edge: Vec<u32>,
    /// Per edge: its kind, name and target node.
    edge_kind: Vec<EdgeKind>,
    edge_name: Vec<EdgeName>,
    edge_to: Vec<u32>,
    classes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EdgeKind {
    Context,
    Element,
    Property,
    Internal,
    Hidden,
    Shortcut,
    Weak,
}

#[derive(Clone, Copy, Debug)]
enum EdgeName {
    /// An index into the names table (`classes`, extended with edge names).
    String(u32),
    /// An array element or hidden slot, shown as `[]`.
    Index,
}

fn field(fields: &[String], name: &str) -> Result<usize> {
    fields.iter().position(|f| f == name).with_context(|| format!("the snapshot has no {name} field"))
}

/// The names of an enumerated field's values (`meta.node_types[0]`).
fn enum_names(types: &[serde_json::Value], at: usize) -> Vec<String> {
    types
        .get(at)
        .and_then(|t| t.as_array())
        .map(|names| names.iter().map(|n| n.as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

/// The class DevTools files a node under: an object's constructor name,
/// else its type in parentheses (`(string)`, `(closure)`, `(array)`).
fn class_of(node_type: &str, name: &str) -> String {
    match node_type {
        // Node names its global object `global / ` (a URL may follow the slash).
        "object" | "native" | "synthetic" => name.trim_end_matches(" / ").to_string(),
        "string" | "concatenated string" | "sliced string" => "(string)".into(),
        "array" if name.is_empty() => "(array)".into(),
        "array" => format!("({name})"),
        "code" => "(compiled code)".into(),
        "hidden" => "(system)".into(),
        "closure" => "(closure)".into(),
        other => format!("({other})"),
    }
}

impl HeapGraph {
    /// Parses a snapshot's JSON.
    pub fn parse(json: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(json).context("parsing the heap snapshot")?;
        let m = &raw.snapshot.meta;
        let (nf, ef) = (m.node_fields.len(), m.edge_fields.len());
        if nf == 0 || ef == 0 || !raw.nodes.len().is_multiple_of(nf) || !raw.edges.len().is_multiple_of(ef) {
            bail!("the heap snapshot's arrays do not match its fields");
        }
        let (n_type, n_name, n_id, n_size, n_edges) = (
            field(&m.node_fields, "type")?,
            field(&m.node_fields, "name")?,
            field(&m.node_fields, "id")?,
            field(&m.node_fields, "self_size")?,
            field(&m.node_fields, "edge_count")?,
        );
        let (e_type, e_name, e_to) = (
            field(&m.edge_fields, "type")?,
            field(&m.edge_fields, "name_or_index")?,
            field(&m.edge_fields, "to_node")?,
        );
        let node_types = enum_names(&m.node_types, n_type);
        let edge_types = enum_names(&m.edge_types, e_type);
        let string = |i: u64| raw.strings.get(i as usize).map(String::as_str).unwrap_or_default();
        let nodes = raw.nodes.len() / nf;
        let mut g = HeapGraph {
            class: Vec::with_capacity(nodes),
            id: Vec::with_capacity(nodes),
            size: Vec::with_capacity(nodes),
            first_edge: Vec::with_capacity(nodes + 1),
            edge_kind: Vec::new(),
            edge_name: Vec::new(),
            edge_to: Vec::new(),
            classes: Vec::new(),
        };
        let mut class_index: HashMap<String, u32> = HashMap::new();
        let mut edge = 0u64;
        for n in raw.nodes.chunks_exact(nf) {
            let node_type = node_types.get(n[n_type] as usize).map(String::as_str).unwrap_or("hidden");
            let class = class_of(node_type, string(n[n_name]));
            let next = class_index.len() as u32;
            let class = *class_index.entry(class).or_insert(next);
            if n[n_size] > MAX_OBJECT_BYTES {
                bail!("a heap snapshot object of {} bytes", n[n_size]);
            }
            g.class.push(class);
            g.id.push(n[n_id]);
            g.size.push(n[n_size]);
            g.first_edge.push(u32::try_from(edge).context("too many edges")?);
            edge = edge.checked_add(n[n_edges]).context("too many edges")?;
        }
        g.first_edge.push(u32::try_from(edge).context("too many edges")?);
        if edge as usize != raw.edges.len() / ef {
            bail!("the heap snapshot's edge counts do not add up");
        }
        let mut classes = vec![String::new(); class_index.len()];
        for (name, i) in class_index {
            classes[i as usize] = name;
        }
        g.classes = classes;
        for e in raw.edges.chunks_exact(ef) {
            let kind = match edge_types.get(e[e_type] as usize).map(String::as_str) {
                Some("context") => EdgeKind::Context,
                Some("element") => EdgeKind::Element,
                Some("property") => EdgeKind::Property,
                Some("internal") => EdgeKind::Internal,
                Some("shortcut") => EdgeKind::Shortcut,
                Some("weak") => EdgeKind::Weak,
                _ => EdgeKind::Hidden,
            };
            let to = e[e_to] as usize / nf;
            if to >= nodes {
                bail!("a heap snapshot edge points past the last node");
            }
            g.edge_kind.push(kind);
            g.edge_name.push(match kind {
                EdgeKind::Element | EdgeKind::Hidden => EdgeName::Index,
                _ => EdgeName::String(e[e_name] as u32),
            });
            g.edge_to.push(to as u32);
        }
        // Edge names that are strings are kept as text only where a path shows them.
        g.resolve_edge_names(&raw.strings);
        Ok(g)
    }

    fn resolve_edge_names(&mut self, strings: &[String]) {
        // Interned as classes are: the names stay in `classes`' table.
        let mut index: HashMap<&str, u32> = HashMap::new();
        let base = self.classes.len() as u32;
        let mut extra: Vec<String> = Vec::new();
        for name in self.edge_name.iter_mut() {
            if let EdgeName::String(s) = name {
                let text = strings.get(*s as usize).map(String::as_str).unwrap_or_default();
                let next = base + index.len() as u32;
                let i = *index.entry(text).or_insert_with(|| {
                    extra.push(text.to_string());
                    next
                });
                *s = i;
            }
        }
        self.classes.extend(extra);
    }

    pub fn objects(&self) -> usize {
        self.id.len()
    }

    pub fn bytes(&self) -> u64 {
        self.size.iter().fold(0u64, |sum, &size| sum.saturating_add(size))
    }

    fn edges(&self, node: usize) -> std::ops::Range<usize> {
        self.first_edge[node] as usize..self.first_edge[node + 1] as usize
    }

    /// Each node's nearest retainer: the edge that first reaches it in a
    /// breadth-first walk over strong edges, from the user roots (the
    /// global object, node's environment) before the GC roots (the string
    /// table, the handle scopes), as DevTools orders retainers, so a path
    /// goes through the program's own objects where it can. Per node: the
    /// retaining node and edge, `None` for the roots and the unreachable.
    fn nearest_retainers(&self) -> Vec<Option<(u32, u32)>> {
        let nodes = self.id.len();
        let mut retainer = vec![None; nodes];
        let mut seen = vec![false; nodes];
        if nodes == 0 {
            return retainer;
        }
        seen[0] = true;
        let (gc_roots, user_roots): (Vec<usize>, Vec<usize>) = self
            .edges(0)
            .map(|e| self.edge_to[e] as usize)
            .partition(|&n| self.classes[self.class[n] as usize] == "(GC roots)");
        for roots in [user_roots, gc_roots] {
            let mut queue = std::collections::VecDeque::new();
            for n in roots {
                if !seen[n] {
                    seen[n] = true;
                    queue.push_back(n);
                }
            }
            while let Some(node) = queue.pop_front() {
                for e in self.edges(node) {
                    let to = self.edge_to[e] as usize;
                    if self.edge_kind[e] != EdgeKind::Weak && !seen[to] {
                        seen[to] = true;
                        retainer[to] = Some((node as u32, e as u32));
                        queue.push_back(to);
                    }
                }
            }
        }
        retainer
    }

    /// How a retaining step reads: `Class.name`, or `Class[]` for an
    /// element (V8 names hash table slots by number too).
    fn step(&self, from: usize, edge: usize) -> String {
        let from = &self.classes[self.class[from] as usize];
        match self.edge_name[edge] {
            EdgeName::String(s) if !self.classes[s as usize].bytes().all(|b| b.is_ascii_digit()) => {
                format!("{from}.{}", self.classes[s as usize])
            }
            _ => format!("{from}[]"),
        }
    }

    /// The path that retains `node`, through each nearest retainer, the
    /// steps nearest the object last; empty for an unreachable node.
    fn retaining_path(&self, node: usize, retainers: &[Option<(u32, u32)>]) -> Vec<String> {
        let mut steps = Vec::new();
        let mut at = node;
        while let Some((from, edge)) = retainers[at] {
            if steps.len() == PATH_STEPS {
                break;
            }
            // The parts of a concatenated or sliced string are that string.
            if self.classes[self.class[from as usize] as usize] != "(string)" {
                steps.push(self.step(from as usize, edge as usize));
            }
            at = from as usize;
        }
        steps.reverse();
        steps
    }
}

/// What a later snapshot is compared with: every object of the first by
/// id, with its class and size.
pub struct Baseline {
    objects: HashMap<u64, (u32, u64)>,
    classes: Vec<String>,
}

impl Baseline {
    pub fn of(g: &HeapGraph) -> Self {
        let objects = (0..g.objects()).map(|i| (g.id[i], (g.class[i], g.size[i]))).collect();
        // Class indices come first in the names table; edge names follow.
        let classes = g.classes[..g.class.iter().map(|&c| c as usize + 1).max().unwrap_or(0)].to_vec();
        Self { objects, classes }
    }
}

/// `after` against `base`: per class, new and deleted objects and bytes,
/// most grown first, with the retaining paths of the classes that grew most.
pub fn compare(
    base: &Baseline,
    after: &HeapGraph,
    base_label: &str,
    after_label: &str,
) -> HeapSnapshotComparison {
    #[derive(Default)]
    struct Tally {
        new_objects: u64,
        new_bytes: u64,
        deleted_objects: u64,
        freed_bytes: u64,
        new_nodes: Vec<(u64, usize)>,
    }
    let mut by_class: HashMap<&str, Tally> = HashMap::new();
    let mut alive: std::collections::HashSet<u64> = std::collections::HashSet::with_capacity(after.objects());
    for node in 0..after.objects() {
        let id = after.id[node];
        alive.insert(id);
        if base.objects.contains_key(&id) {
            continue;
        }
        let t = by_class.entry(&after.classes[after.class[node] as usize]).or_default();
        t.new_objects += 1;
        t.new_bytes = t.new_bytes.saturating_add(after.size[node]);
        t.new_nodes.push((after.size[node], node));
    }
    for (id, (class, size)) in &base.objects {
        if !alive.contains(id) {
            let t = by_class.entry(base.classes[*class as usize].as_str()).or_default();
            t.deleted_objects += 1;
            t.freed_bytes = t.freed_bytes.saturating_add(*size);
        }
    }
    let mut classes: Vec<(&str, Tally)> = by_class.into_iter().collect();
    let delta = |t: &Tally| {
        (t.new_bytes as i128 - t.freed_bytes as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
    };
    classes.sort_by_key(|(name, t)| (std::cmp::Reverse(delta(t)), name.to_string()));
    classes.truncate(CLASSES_SHOWN);
    let retainers = after.nearest_retainers();
    let grew = classes
        .into_iter()
        .enumerate()
        .map(|(rank, (class, t))| {
            let (retained_by, path_share) = if rank < PATHS_SHOWN && delta(&t) > 0 {
                // New objects spread over the class (not its largest few,
                // which are often unlike the rest), weighed by their bytes.
                let stride = t.new_nodes.len().div_ceil(PATH_SAMPLES).max(1);
                let sampled: Vec<(u64, usize)> = t.new_nodes.iter().step_by(stride).copied().collect();
                let mut paths: HashMap<Vec<String>, u64> = HashMap::new();
                for &(size, node) in &sampled {
                    *paths.entry(after.retaining_path(node, &retainers)).or_default() += size.max(1);
                }
                let total: u64 = paths.values().sum();
                let (path, bytes) = paths
                    .into_iter()
                    .max_by_key(|(p, bytes)| (*bytes, std::cmp::Reverse(p.len())))
                    .unwrap_or_default();
                let share = (100 * bytes).checked_div(total).unwrap_or(0);
                (path, format!("{share}% of the bytes of {} new objects sampled", sampled.len()))
            } else {
                (Vec::new(), String::new())
            };
            ClassGrowth {
                class: class.to_string(),
                new_objects: t.new_objects,
                deleted_objects: t.deleted_objects,
                new_bytes: t.new_bytes,
                freed_bytes: t.freed_bytes,
                delta_bytes: delta(&t),
                retained_by,
                path_share,
            }
        })
        .collect();
    HeapSnapshotComparison { base: base_label.to_string(), to: after_label.to_string(), grew }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot in V8's format: root -> service (SyncService) .processedRecords
    /// -> Set .table -> (object elements) [0..n] -> strings.
    fn snapshot(strings_held: usize, first_id: u64) -> String {
        let strings =
            ["", "SyncService", "processedRecords", "Set", "table", "record", "(GC roots)"].map(String::from);
        // nodes: type, name, id, self_size, edge_count, trace_node_id, detachedness
        let mut nodes = vec![
            vec![9, 6, 1, 0, 1, 0, 0],                    // synthetic root
            vec![3, 1, 3, 32, 1, 0, 0],                   // SyncService
            vec![3, 3, 5, 24, 1, 0, 0],                   // Set
            vec![1, 0, 7, 16, strings_held as u64, 0, 0], // its table (array)
        ];
        // edges: type, name_or_index, to_node (a node's index times its 7 fields)
        let mut edges = vec![
            vec![5, 1, 7],  // root -shortcut "SyncService"-> SyncService
            vec![2, 2, 14], // SyncService.processedRecords -> Set
            vec![3, 4, 21], // Set.table (internal) -> array
        ];
        for i in 0..strings_held {
            nodes.push(vec![2, 5, first_id + 2 * i as u64, 64, 0, 0, 0]);
            edges.push(vec![1, i as u64, 7 * (4 + i as u64)]);
        }
        let flat =
            |v: Vec<Vec<u64>>| v.into_iter().flatten().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        format!(
            r#"{{"snapshot":{{"meta":{{"node_fields":["type","name","id","self_size","edge_count","trace_node_id","detachedness"],"node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic"],"string","number","number","number","number","number"],"edge_fields":["type","name_or_index","to_node"],"edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"]}},"node_count":{},"edge_count":{}}},"nodes":[{}],"edges":[{}],"strings":{}}}"#,
            4 + strings_held,
            3 + strings_held,
            flat(nodes),
            flat(edges),
            serde_json::to_string(&strings).unwrap()
        )
    }

    #[test]
    fn what_grew_is_named_with_the_path_that_retains_it() {
        let before = HeapGraph::parse(&snapshot(2, 101)).unwrap();
        assert_eq!(before.objects(), 6);
        let after = HeapGraph::parse(&snapshot(10, 101)).unwrap();
        let c = compare(&Baseline::of(&before), &after, "start", "end");
        let top = &c.grew[0];
        assert_eq!(top.class, "(string)");
        assert_eq!((top.new_objects, top.new_bytes, top.deleted_objects), (8, 8 * 64, 0));
        assert_eq!(top.retained_by, ["SyncService.processedRecords", "Set.table", "(array)[]"]);
        assert_eq!(top.path_share, "100% of the bytes of 8 new objects sampled");
    }

    #[test]
    fn objects_gone_are_counted_as_deleted() {
        let before = HeapGraph::parse(&snapshot(6, 101)).unwrap();
        let after = HeapGraph::parse(&snapshot(2, 101)).unwrap();
        let c = compare(&Baseline::of(&before), &after, "start", "end");
        let strings = c.grew.iter().find(|g| g.class == "(string)").unwrap();
        assert_eq!((strings.new_objects, strings.deleted_objects, strings.delta_bytes), (0, 4, -4 * 64));
        assert!(strings.retained_by.is_empty());
    }

    #[test]
    fn malformed_snapshots_are_refused() {
        assert!(HeapGraph::parse("{}").is_err());
        let bad = snapshot(2, 101).replace("\"edges\":[", "\"edges\":[9,9,9999,");
        assert!(HeapGraph::parse(&bad).is_err());
    }
}

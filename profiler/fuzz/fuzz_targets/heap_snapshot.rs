//! A V8 heap snapshot, which the target writes (`--heap-snapshot`): parsed
//! into its object graph, then compared with itself and with an empty one
//! as the comparison view does (paths, classes, counts).
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::inspector::snapshot::{compare, Baseline, HeapGraph};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(graph) = HeapGraph::parse(text) else { return };
    let _ = compare(&Baseline::of(&graph), &graph, "a", "b");
    if let Ok(empty) = HeapGraph::parse(r#"{"snapshot":{"meta":{"node_fields":["type","name","id","self_size","edge_count"],"node_types":[["synthetic"]],"edge_fields":["type","name_or_index","to_node"],"edge_types":[["element"]]}},"nodes":[],"edges":[],"strings":[]}"#) {
        let _ = compare(&Baseline::of(&empty), &graph, "a", "b");
    }
});

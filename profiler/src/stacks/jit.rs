//! What a JIT's frames mean for a stack's identity. V8 (Node) code moves
//! between tiers while it runs and inlines differently in each, so the same
//! leak is captured under several raw stacks: one JS function is one frame
//! whatever its tier ([`without_tier`]), and the engine's call glue between
//! JS frames and the native code they call, which differs by tier, is not
//! part of what makes two stacks the same ([`is_tier_dependent`]).

use crate::report::model::Frame;

/// A JIT frame's name without its compilation tier. V8 marks the tier in
/// its perf-map names: `JS:~f` interpreted, `JS:^f` baseline (Sparkplug),
/// `JS:+f` Maglev, `JS:*f` optimized (TurboFan); older releases
/// `LazyCompile:*f`, `Function:~f`. One JS function is one frame whatever
/// its tier, so a leak that tiers up mid-run stays one stack.
pub fn without_tier(name: &str) -> std::borrow::Cow<'_, str> {
    for kind in ["JS:", "LazyCompile:", "Function:", "Script:"] {
        if let Some(rest) = name.strip_prefix(kind) {
            if let Some(function) = rest.strip_prefix(['~', '^', '+', '*']) {
                return format!("{kind}{function}").into();
            }
        }
    }
    name.into()
}

/// A frame whose presence depends on the tier of the JS around it, not on
/// what the program does: V8's builtins and API-call trampolines (an
/// interpreted call goes through `Builtin_HandleApiCall`, an optimized one
/// through `Builtins_CallApiCallback`), and Node's own JS (`node:` scripts,
/// such as `Buffer.alloc`), which optimized code inlines into its caller.
pub fn is_tier_dependent(frame: &Frame) -> bool {
    let f = frame.function.as_str();
    if frame.module == "[jit]" {
        return f.contains(" node:");
    }
    f.starts_with("Builtins_")
        || f.contains("HandleApiCall")
        || f.starts_with("v8::internal::FunctionCallbackArguments::Call")
}

/// The frames (innermost first) that make a stack what it is: for a stack
/// with JS frames, without the tier-dependent frames from the innermost
/// native frame the JS called down to the outermost JS frame (Node's own JS
/// is kept when the stack has no other: it is then all that tells two
/// stacks apart). `None` for a stack without JS frames (its frames are its
/// identity).
pub fn identity_frames(frames: &[Frame]) -> Option<Vec<&Frame>> {
    let innermost = frames.iter().position(|f| f.module == "[jit]")?;
    let outermost = frames.iter().rposition(|f| f.module == "[jit]")?;
    // The glue just below the innermost JS frame, down to the native code it called.
    let glue_start = frames[..innermost].iter().rposition(|f| !is_tier_dependent(f)).map_or(0, |i| i + 1);
    let user_js = frames.iter().any(|f| f.module == "[jit]" && !is_tier_dependent(f));
    let dropped = |f: &Frame| is_tier_dependent(f) && (user_js || f.module != "[jit]");
    Some(
        frames
            .iter()
            .enumerate()
            .filter(|(i, f)| !((glue_start..=outermost).contains(i) && dropped(f)))
            .map(|(_, f)| f)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_one_function() {
        for tiered in [
            "JS:~leak /app/a.js:3:1",
            "JS:^leak /app/a.js:3:1",
            "JS:+leak /app/a.js:3:1",
            "JS:*leak /app/a.js:3:1",
        ] {
            assert_eq!(without_tier(tiered), "JS:leak /app/a.js:3:1");
        }
        assert_eq!(without_tier("LazyCompile:*leak /app/a.js:3"), "LazyCompile:leak /app/a.js:3");
        assert_eq!(without_tier("Builtin:ArrayPush"), "Builtin:ArrayPush");
        assert_eq!(without_tier("JS:leak"), "JS:leak");
    }

    fn frames(names: &[(&str, &str)]) -> Vec<Frame> {
        names.iter().map(|(f, m)| Frame { module: m.to_string(), ..Frame::named(f) }).collect()
    }

    #[test]
    fn interpreted_and_optimized_stacks_of_one_leak_are_one() {
        let interpreted = frames(&[
            ("node::NodeArrayBufferAllocator::AllocateUninitialized(unsigned long)", "node"),
            ("node::Buffer::CreateUnsafeArrayBuffer", "node"),
            ("v8::internal::FunctionCallbackArguments::Call(v8::internal::CallHandlerInfo)", "node"),
            ("v8::internal::Builtin_HandleApiCall(int, unsigned long*, v8::internal::Isolate*)", "node"),
            ("Builtins_CEntry_Return1_ArgvOnStack_BuiltinExit", "node"),
            ("JS:createUnsafeBuffer node:internal/buffer:1056:28", "[jit]"),
            ("Builtins_InterpreterEntryTrampoline", "node"),
            ("JS:alloc node:buffer:391:30", "[jit]"),
            ("JS:leak /app/tierup.js:15:14", "[jit]"),
            ("JS:listOnTimeout node:internal/timers:524:25", "[jit]"),
            ("Builtins_JSEntryTrampoline", "node"),
            ("node::Environment::RunTimers(uv_timer_s*)", "node"),
        ]);
        let optimized = frames(&[
            ("node::NodeArrayBufferAllocator::AllocateUninitialized(unsigned long)", "node"),
            ("node::Buffer::CreateUnsafeArrayBuffer", "node"),
            ("Builtins_CallApiCallback", "node"),
            ("JS:leak /app/tierup.js:15:14", "[jit]"),
            ("JS:listOnTimeout node:internal/timers:524:25", "[jit]"),
            ("Builtins_JSEntryTrampoline", "node"),
            ("node::Environment::RunTimers(uv_timer_s*)", "node"),
        ]);
        let names = |f: &[Frame]| -> Vec<String> {
            identity_frames(f).unwrap().iter().map(|f| f.function.clone()).collect()
        };
        assert_eq!(names(&interpreted), names(&optimized));
        assert_eq!(names(&optimized).len(), 5, "{:?}", names(&optimized));
        // The compiler's own memory under leak() stays its own stack.
        let compiling = frames(&[
            ("v8::internal::Zone::Expand(unsigned long)", "node"),
            ("v8::internal::Runtime_CompileOptimized(int, unsigned long*, v8::internal::Isolate*)", "node"),
            ("Builtins_CEntry_Return1_ArgvOnStack_NoBuiltinExit", "node"),
            ("JS:leak /app/tierup.js:15:14", "[jit]"),
        ]);
        assert_eq!(names(&compiling).len(), 3);
        assert!(identity_frames(&frames(&[("main", "demo")])).is_none());
        // Only Node's own JS: it is what tells the stack apart, so it stays.
        let internal = frames(&[
            ("uv__socket", "node"),
            ("Builtins_CallApiCallback", "node"),
            ("JS:internalConnect node:net:1004:26", "[jit]"),
            ("JS:processTicksAndRejections node:internal/process/task_queues:67:35", "[jit]"),
        ]);
        assert_eq!(names(&internal).len(), 3, "{:?}", names(&internal));
    }
}

//! Where to put an entry uprobe in a function. The kernel emulates some x86
//! instructions when a uprobe hits them (relative branches and calls, `push
//! reg`) and single-steps the rest out of line, which costs a second trap:
//! glibc's `free` starts with `test %rdi,%rdi`, a 4.6 us probe, while the
//! `je` right after it is emulated (~1 us). So the probe goes on the first
//! emulated instruction of the straight-line prologue, provided every call
//! still passes there with its arguments and stack pointer untouched.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

/// Instructions looked at before giving up.
const MAX_SKIPPED: usize = 4;

/// How entry probes are placed (`--probe-placement`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PlacementMode {
    /// On the first instruction the kernel emulates (one trap instead of two).
    #[default]
    Emulated,
    /// At the function's first byte, as most tools do (for comparison).
    Entry,
}

/// The chosen offset and why, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub note: String,
}

fn emulated(instr: &iced_x86::Instruction) -> bool {
    let relative = instr.op_count() == 1 && matches!(instr.op0_kind(), OpKind::NearBranch64);
    match instr.flow_control() {
        FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call => relative,
        _ => instr.mnemonic() == Mnemonic::Push && instr.op0_kind() == OpKind::Register,
    }
}

/// Registers an entry probe reads: the argument registers and the stack pointer.
const PRESERVED: [Register; 7] =
    [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9, Register::RSP];

/// Picks the probe offset in `code`, the function's bytes loaded at `address`.
pub fn choose(code: &[u8], address: u64) -> Placement {
    let at_start = |why: String| Placement { offset: 0, note: why };
    // Every branch target inside the function: a probe moved past one would be skipped by that path.
    let mut targets = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for instr in &mut decoder {
        if matches!(instr.op0_kind(), OpKind::NearBranch64) {
            targets.push(instr.near_branch_target());
        }
    }
    let mut info = InstructionInfoFactory::new();
    let decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for (i, instr) in decoder.into_iter().take(MAX_SKIPPED + 1).enumerate() {
        let offset = instr.ip() - address;
        if offset > 0 && targets.contains(&instr.ip()) {
            return at_start(format!("offset 0 (a branch targets +{offset:#x})"));
        }
        if emulated(&instr) {
            return Placement { offset, note: format!("+{offset:#x} ({}, emulated)", instr.mnemonic_str()) };
        }
        if i == MAX_SKIPPED || instr.flow_control() != FlowControl::Next {
            break;
        }
        let writes = info.info(&instr).used_registers().iter().any(|r| {
            matches!(
                r.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            ) && PRESERVED.contains(&r.register().full_register())
        });
        if writes {
            return at_start(format!("offset 0 (+{offset:#x} changes an argument or the stack)"));
        }
    }
    at_start("offset 0 (no emulated instruction in the prologue)".into())
}

trait MnemonicStr {
    fn mnemonic_str(&self) -> String;
}

impl MnemonicStr for iced_x86::Instruction {
    fn mnemonic_str(&self) -> String {
        format!("{:?}", self.mnemonic()).to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_free_moves_to_the_branch_after_its_test() {
        // test %rdi,%rdi; je +0xbf; push %rbp; lea -0x10(%rdi),%rsi
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55, 0x48, 0x8d, 0x77, 0xf0];
        assert_eq!(choose(&code, 0x1000).offset, 3);
    }

    #[test]
    fn an_emulated_first_instruction_stays_at_zero() {
        // push %r12; push %rbp
        assert_eq!(choose(&[0x41, 0x54, 0x55], 0x1000).offset, 0);
    }

    #[test]
    fn never_past_an_argument_write_or_a_branch_target() {
        // mov %rsi,%rdi; je ...
        let writes = [0x48, 0x89, 0xf7, 0x74, 0x00];
        assert_eq!(choose(&writes, 0x1000).offset, 0);
        // test %rdi,%rdi; je -2 (to itself: a branch target at +3)
        let loop_back = [0x48, 0x85, 0xff, 0x74, 0xfe];
        assert_eq!(choose(&loop_back, 0x1000).offset, 0);
    }
}

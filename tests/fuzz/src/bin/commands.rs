//! Fuzz target: see `clacks_fuzz::commands`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::commands(data));
}

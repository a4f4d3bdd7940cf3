//! Fuzz target: see `clacks_fuzz::frames`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::frames(data));
}

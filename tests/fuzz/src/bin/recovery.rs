//! Fuzz target: see `clacks_fuzz::recovery`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::recovery(data));
}

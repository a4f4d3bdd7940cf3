//! Fuzz target: see `clacks_fuzz::events`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::events(data));
}

//! Fuzz target: see `clacks_fuzz::sasl`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::sasl(data));
}

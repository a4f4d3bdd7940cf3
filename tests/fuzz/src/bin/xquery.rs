//! Fuzz target: see `clacks_fuzz::xquery`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::xquery(data));
}

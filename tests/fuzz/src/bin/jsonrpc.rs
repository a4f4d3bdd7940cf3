//! Fuzz target: see `clacks_fuzz::jsonrpc`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::jsonrpc(data));
}

//! Fuzz target: see `clacks_fuzz::acl`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::acl(data));
}

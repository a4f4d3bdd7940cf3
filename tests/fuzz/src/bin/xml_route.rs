//! Fuzz target: see `clacks_fuzz::xml_route`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::xml_route(data));
}

fn main() {
    // bpf-linker must be on PATH; say so early instead of failing in the linker step.
    if which::which("bpf-linker").is_err() {
        println!("cargo:warning=bpf-linker not found: run `cargo xtask setup`");
    }
}

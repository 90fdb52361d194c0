//! containerd-shim-husk-v2: the containerd shim v2 runtime `io.containerd.husk.v2`.

fn main() {
    // One thread: a shim serves one pod and mostly waits; this keeps it small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(containerd_shim::asynchronous::run::<
        husk_shim::manager::HuskShim,
    >(
        husk_shim::manager::RUNTIME_ID,
        Some(husk_shim::manager::shim_config()),
    ));
}

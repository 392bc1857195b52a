//! What the zero-round-trip probe costs against other system calls on this machine.
//!
//! `cargo run --release -p lido-core --example syscall_cost`

use lido_core::probe_socket;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let (a, _b) = UnixStream::pair().expect("socketpair");
    let fd = a.as_raw_fd();
    let n = 2_000_000;
    for round in 1..=3 {
        let probe = per_call(n, || {
            std::hint::black_box(probe_socket(fd));
        });
        let peek = per_call(n, || {
            let mut b = 0u8;
            // SAFETY: a one-byte buffer we own.
            std::hint::black_box(unsafe {
                libc::recv(
                    fd,
                    (&mut b as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            });
        });
        let getppid = per_call(n, || {
            // SAFETY: no arguments, no side effects.
            std::hint::black_box(unsafe { libc::getppid() });
        });
        println!(
            "round {round}: probe_socket (poll) {probe:.0} ns, recv(MSG_PEEK) {peek:.0} ns, \
             getppid {getppid:.0} ns"
        );
    }
}

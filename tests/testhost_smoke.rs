//! The KVM test host (QEMU TCG with nested SVM) works: it boots, has a
//! usable `/dev/kvm` with nested paging, returns the command's output and exit
//! code, runs QEMU `-M microvm` as a nested peer VMM that boots silo's guest
//! kernel, and forwards a TCP port so a host client reaches a server inside.
//!
//! These run on any host with QEMU (TCG needs no KVM); a missing requirement
//! fails with the test host's error, never a silent pass.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use silo_images::testhost::TestHost;

#[test]
fn test_host_has_kvm_and_propagates_exit_codes() {
    let out = TestHost::new()
        .timeout(Duration::from_secs(300))
        .run(
            "ls -l /dev/kvm; echo npt=$(cat /sys/module/kvm_amd/parameters/npt); \
             echo kvm_open=$(head -c0 /dev/kvm && echo ok); exit 3",
        )
        .expect("test host run");
    assert_eq!(out.exit_code, 3, "console:\n{}", out.console);
    assert!(
        out.output.contains("crw"),
        "/dev/kvm is a char device:\n{}",
        out.output
    );
    assert!(out.output.contains("kvm_open=ok"), "{}", out.output);
    assert!(
        out.output.contains("npt=1") || out.output.contains("npt=Y"),
        "nested paging on:\n{}",
        out.output
    );
}

/// The nested guest's `/init`: a marker with its uptime, then a triple-fault
/// reboot (`reboot=t`) that ends QEMU at once.
const NESTED_INIT: &str = r#"
/bin/busybox mount -t proc proc /proc
echo "SILO_NESTED_GUEST_UP uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox reboot -f
"#;

#[test]
fn qemu_microvm_in_test_host_boots_the_guest_kernel() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel build");
    let initrd = silo_images::guest::busybox_initramfs(NESTED_INIT).expect("guest initramfs");
    let out = TestHost::new()
        .timeout(Duration::from_secs(300))
        .with_qemu()
        .expect("QEMU for the test host")
        .file(&kernel.bz_image, "/work/bzImage", 0o644)
        .bytes("/work/guest.cpio", initrd, 0o644)
        .run(
            "qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 128 -smp 1 \
             -nodefaults -no-user-config -display none -serial stdio -no-reboot \
             -kernel bzImage -initrd guest.cpio \
             -append 'console=ttyS0 reboot=t panic=-1 quiet'; echo QEMU_EXIT=$?",
        )
        .expect("test host run");
    assert!(
        out.output.contains("SILO_NESTED_GUEST_UP uptime="),
        "the nested guest's userspace did not start:\n{}",
        out.console
    );
    assert!(out.output.contains("QEMU_EXIT=0"), "{}", out.output);
    assert_eq!(out.exit_code, 0);
}

/// One HTTP/1.0 GET; `None` when the connection fails or closes without a
/// response (the forwarder accepts before the server inside listens).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[test]
fn port_forward_reaches_a_server_in_the_test_host() {
    let nonce = format!(
        "nonce-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port();
    // busybox httpd serves the nonce; its CGI `stop` ends the command.
    let command = format!(
        "mkdir -p /srv/cgi-bin && echo {nonce} > /srv/nonce.txt\n\
         printf '#!/bin/sh\\ntouch /tmp/stop\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nstopping\\\\n\"\\n' > /srv/cgi-bin/stop\n\
         chmod 755 /srv/cgi-bin/stop\n\
         httpd -p 8080 -h /srv\n\
         i=0; while [ ! -f /tmp/stop ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         [ -f /tmp/stop ] && echo SERVER_STOPPED_BY_HOST"
    );
    let host = TestHost::new()
        .timeout(Duration::from_secs(300))
        .port_forward(port, 8080);
    let run = std::thread::spawn(move || host.run(&command));

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut got = None;
    while Instant::now() < deadline && !run.is_finished() {
        if let Some(r) = http_get(port, "/nonce.txt") {
            got = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let stop = got.as_ref().and_then(|_| http_get(port, "/cgi-bin/stop"));
    let out = run
        .join()
        .expect("test host thread")
        .expect("test host run");
    let (status, body) = got.unwrap_or_else(|| {
        panic!(
            "no HTTP response through the forwarded port:\n{}",
            out.console
        )
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), nonce);
    assert_eq!(
        stop.map(|(s, b)| (s, b.trim().to_string())),
        Some((200, "stopping".to_string())),
        "CGI stop:\n{}",
        out.console
    );
    assert!(
        out.output.contains("SERVER_STOPPED_BY_HOST"),
        "{}",
        out.output
    );
    assert_eq!(out.exit_code, 0);
}

//! The KVM test host boots, has a working /dev/kvm with nested paging, and
//! returns the command's output and exit code.

use silo_images::testhost::TestHost;

#[test]
fn test_host_has_kvm_and_propagates_exit_codes() {
    let out = TestHost::new()
        .run("ls -l /dev/kvm; echo npt=$(cat /sys/module/kvm_amd/parameters/npt); exit 3")
        .expect("test host run");
    assert_eq!(out.exit_code, 3, "console:\n{}", out.console);
    assert!(out.output.contains("/dev/kvm"), "{}", out.output);
    assert!(
        out.output.contains("npt=1") || out.output.contains("npt=Y"),
        "{}",
        out.output
    );
}

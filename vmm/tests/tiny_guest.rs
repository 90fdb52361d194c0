//! Tiny guest programs on /dev/kvm (in the style of kvm-ioctls'
//! `test_run_code`): a few bytes of x86 write to the serial port, to an MMIO
//! region and to the i8042, and halt; every byte is checked.

use std::io::Write;
use std::sync::{Arc, Mutex};

use husk_vmm::boot::regs;
use husk_vmm::devices::bus::{Bus, BusDevice};
use husk_vmm::devices::i8042::I8042;
use husk_vmm::devices::serial::{ConsoleSink, IrqTrigger, SerialDevice};
use husk_vmm::vcpu::{Vcpu, VcpuStop};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records MMIO writes (address offset, bytes) and answers reads with 0x5a.
#[derive(Default)]
struct MmioRecorder(Vec<(u64, Vec<u8>)>);
impl BusDevice for MmioRecorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.push((offset, data.to_vec()));
    }
}

struct Tiny {
    vcpu: Vcpu,
    console: Capture,
    mmio: Arc<Mutex<MmioRecorder>>,
    reset: EventFd,
    _vm: kvm_ioctls::VmFd,
    _mem: husk_vmm::memory::GuestMem,
}

fn tiny(code: &[u8], load_at: u64, mmio_base: u64) -> Tiny {
    // RAM ends right after the code page, so the MMIO window is never RAM.
    let mem = husk_vmm::memory::create(load_at + 0x1000).unwrap();
    mem.write_slice(code, GuestAddress(load_at)).unwrap();
    let (_kvm, vm) = husk_vmm::kvm::create_vm(&mem).unwrap();
    let console = Capture::default();
    let serial = SerialDevice(vm_superio::Serial::new(
        IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        ConsoleSink::new(Box::new(console.clone())),
    ));
    let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut pio = Bus::default();
    pio.insert(0x3f8, 8, Arc::new(Mutex::new(serial))).unwrap();
    pio.insert(
        0x60,
        5,
        Arc::new(Mutex::new(I8042::new(reset.try_clone().unwrap()))),
    )
    .unwrap();
    let rec = Arc::new(Mutex::new(MmioRecorder::default()));
    let mut mmio = Bus::default();
    mmio.insert(mmio_base, 0x1000, rec.clone()).unwrap();
    let vcpu = Vcpu::new(&vm, 0, pio, mmio).unwrap();
    Tiny {
        vcpu,
        console,
        mmio: rec,
        reset,
        _vm: vm,
        _mem: mem,
    }
}

fn run_to_halt(t: &mut Tiny) {
    for _ in 0..1000 {
        match t.vcpu.run_once() {
            None => continue,
            Some(VcpuStop::Halted) => return,
            Some(other) => panic!("guest stopped with {other:?}"),
        }
    }
    panic!("guest did not halt within 1000 exits");
}

fn have_kvm() -> bool {
    husk_testutil::require(husk_testutil::kvm_available(), "/dev/kvm")
}

#[test]
fn real_mode_serial_mmio_and_reset() {
    if !have_kvm() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xb0, b'H', 0xee,             // mov al, 'H'; out dx, al
        0xb0, b'i', 0xee,             // mov al, 'i'; out dx, al
        0xc6, 0x06, 0x00, 0x80, 0x42, // mov byte [0x8000], 0x42  (MMIO write)
        0xa0, 0x00, 0x80,             // mov al, [0x8000]          (MMIO read: 0x5a)
        0xee,                         // out dx, al
        0xb0, b'\n', 0xee,            // mov al, '\n'; out dx, al
        0xb0, 0xfe, 0xe6, 0x64,       // mov al, 0xfe; out 0x64, al (i8042 reset)
        0xf4,                         // hlt
    ];
    let mut t = tiny(&code, 0x1000, 0x8000);
    let mut sregs = t.vcpu.fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    t.vcpu.fd.set_sregs(&sregs).unwrap();
    let r = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    t.vcpu.fd.set_regs(&r).unwrap();
    assert!(t.reset.read().is_err(), "no reset before running");
    run_to_halt(&mut t);
    assert_eq!(t.console.0.lock().unwrap().as_slice(), b"HiZ\n");
    assert_eq!(t.mmio.lock().unwrap().0, vec![(0, vec![0x42])]);
    assert_eq!(t.reset.read().unwrap(), 1, "i8042 reset seen");
}

#[test]
fn pvh_entry_state_is_flat_protected_mode() {
    if !have_kvm() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03, 0x00, 0x00,       // mov edx, 0x3f8
        0x88, 0xf8, 0xee,                   // mov al, bh; out dx, al  (start info 0x6000 -> '`')
        0xc7, 0x05, 0x10, 0x00, 0x00, 0xd0, // mov dword [0xd0000010], 0x11223344
        0x44, 0x33, 0x22, 0x11,
        0xf4,                               // hlt
    ];
    let mut t = tiny(&code, 0x10_000, 0xd000_0000);
    regs::write_gdt(&t._mem).unwrap();
    let mut sregs = t.vcpu.fd.get_sregs().unwrap();
    regs::pvh_sregs(&mut sregs);
    t.vcpu.fd.set_sregs(&sregs).unwrap();
    t.vcpu.fd.set_regs(&regs::pvh_regs(0x10_000)).unwrap();
    run_to_halt(&mut t);
    assert_eq!(t.console.0.lock().unwrap().as_slice(), b"`");
    assert_eq!(
        t.mmio.lock().unwrap().0,
        vec![(0x10, vec![0x44, 0x33, 0x22, 0x11])]
    );
    let after = t.vcpu.fd.get_sregs().unwrap();
    assert_eq!(after.cr0 & 1, 1, "still in protected mode");
}

# POST: stack, PICs, then the boot descriptor decides (the VMM wrote the IVT, the BDA and
# the descriptor, and programmed the PIT).
        .code16
        .intel_syntax noprefix
        .text
        .globl post
        .include "layout.inc"
post:
        cli
        cld
        xor     ax, ax
        mov     ss, ax
        mov     sp, STACK_TOP
        mov     es, ax                          # ES: low RAM, for the whole firmware
        mov     ax, cs
        mov     ds, ax                          # DS: the ROM (strings)

        # The IVT is the VMM's (src/bios/ivt.rs): every vector to default_isr, the PIC
        # vectors to the handlers that acknowledge, the services from service_vectors.
        call    pic_init
        # The PIT: programmed by the VMM (src/bios/pit.rs), channel 0 at 18.2 Hz.

        # The boot descriptor: the VMM's copy of fw_cfg's opt/minipc/boot, in low RAM.
        cmp     dword ptr es:[BOOT_DESC + BD_MAGIC], BOOT_MAGIC
        jne     no_descriptor

        # What to start: an index into boot_kinds.
        mov     bx, es:[BOOT_DESC + BD_KIND]
        cmp     bx, BOOT_KINDS
        jae     1f
        shl     bx, 1
        jmp     word ptr [bx + boot_kinds]
1:      mov     si, offset msg_bad_kind
        jmp     fatal

# Kind 4: the disk's boot sector, through INT 19h (which returns only when it cannot boot).
boot_disk:
        mov     al, 0xB4
        out     0x80, al                        # POST code: the hand-off (--stats handoff_us)
        int     0x19
        mov     si, offset msg_no_boot
        jmp     fatal

no_descriptor:
        mov     si, offset msg_no_desc
        # fall through

# Prints the string at DS:SI (`lstr`) and halts for good.
        .globl fatal
fatal:
        call    puts
# Halts for good, with interrupts off. The VMM hears of it first (port 0xEB): a lone vCPU
# ends the VM at once, rather than when the VMM's halt detector notices the halt. An NMI
# returns to the HLT.
        .globl halt_forever
halt_forever:
        cli
        .globl halt_out
halt_out:
        out     0xEB, al
        .globl halt_hlt
halt_hlt:
        hlt
        jmp     halt_hlt

# The 8259 pair: vectors 08h and 70h, the slave on IRQ 2, IRQ 0 and 2 unmasked.
pic_init:
        mov     al, 0x11
        out     0x20, al
        out     0xA0, al
        mov     al, 0x08
        out     0x21, al
        mov     al, 0x70
        out     0xA1, al
        mov     al, 0x04
        out     0x21, al
        mov     al, 0x02
        out     0xA1, al
        mov     al, 0x01
        out     0x21, al
        out     0xA1, al
        mov     al, 0xFA
        out     0x21, al
        mov     al, 0xFF
        out     0xA1, al
        ret

default_isr:
        iret

irq_master_isr:
        push    ax
        mov     al, 0x20
        out     0x20, al
        pop     ax
        iret

irq_slave_isr:
        push    ax
        mov     al, 0x20
        out     0xA0, al
        out     0x20, al
        pop     ax
        iret

        .section .rodata
# One entry per boot kind (firmware/README.md, "Boot descriptor").
boot_kinds:
        .word   demo                            # 0: the built-in demo
        .word   handoff_real                    # 1: real mode, registers from the descriptor
        .word   handoff_protected               # 2: 32-bit protected mode, paging off
        .word   handoff_protected               # 3: 64-bit long mode, identity paging
        .word   boot_disk                       # 4: INT 19h: the boot sector of the disk
        .set    BOOT_KINDS, (. - boot_kinds) / 2
        lstr    msg_no_desc, "minipc firmware: no boot descriptor\r\n"
        lstr    msg_no_boot, "minipc firmware: the disk is not bootable\r\n"
        lstr    msg_bad_kind, "minipc firmware: unknown boot kind\r\n"

# BIOS service handlers: each hands the call to the VMM through its own port (0xE0 + n) and
# returns. The VMM reads and writes the registers, and the carry/zero flags in the FLAGS
# word that INT pushed (src/bios/). The VMM serves a port write only from the `out` labelled
# intNN_out below (build.rs hands their offsets to the VMM).
#
# The handler's own CF after the `out` is the VMM's answer to the handler, not to the caller:
# INT 16h: CF=1 means no key yet: wait for an interrupt and ask again. INT 19h: CF=1 means the
# disk cannot boot (the VMM printed why).
        .code16
        .intel_syntax noprefix
        .text
        .globl int10_out, int11_out, int12_out, int13_out, int15_out, int16_out
        .globl int18_out, int19_out, int1a_out, irq0_handler

int10_handler:
int10_out:
        out     0xE0, al
        iret
int13_handler:
int13_out:
        out     0xE1, al
        iret
int15_handler:
int15_out:
        out     0xE2, al
        iret
int16_handler:
int16_out:
        out     0xE3, al
        jc      1f
        iret
1:      sti                                     # no key: sleep until an interrupt (IRQ 0
        hlt                                     # ticks at 18.2 Hz), then ask again
        cli
        jmp     int16_handler
int1a_handler:
int1a_out:
        out     0xE4, al
        iret
int11_handler:
int11_out:
        out     0xE5, al
        iret
int12_handler:
int12_out:
        out     0xE6, al
        iret

# INT 18h: no bootable device. The VMM prints the message; the machine halts for good.
int18_handler:
int18_out:
        out     0xE7, al
        jmp     halt_forever

# INT 19h: the VMM loads the boot sector at 0:7C00 and sets DL to the boot drive; jump to it
# with the segments at 0, the stack below it and interrupts on, as a PC BIOS does.
int19_handler:
int19_out:
        out     0xE8, al
        jc      int18_handler
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00
        sti
        .byte   0xEA                            # jmp far 0000:7C00
        .word   0x7C00, 0x0000

# IRQ 0 (18.2 Hz): the tick count at 0x46C, wrapped at midnight (0x1800B0 ticks) with the
# flag at 0x470; then the user hook INT 1Ch and the end of interrupt.
irq0_handler:
        push    ds
        push    ax
        xor     ax, ax
        mov     ds, ax
        add     word ptr [0x46C], 1
        adc     word ptr [0x46E], 0
        cmp     word ptr [0x46E], 0x18
        jb      1f
        cmp     word ptr [0x46C], 0xB0
        jb      1f
        mov     [0x46C], ax
        mov     [0x46E], ax
        mov     byte ptr [0x470], 1
1:      int     0x1C
        mov     al, 0x20
        out     0x20, al
        pop     ax
        pop     ds
        iret

        .section .rodata
# The diskette parameter table (INT 1Eh points at it; INT 13h AH=08h returns it for a
# floppy): 1.44 MB timings, 18 sectors per track.
        .globl floppy_dpt
floppy_dpt:
        .byte   0xAF, 0x02, 0x25, 0x02, 18, 0x1B, 0xFF, 0x6C, 0xF6, 0x0F, 0x08

# The system configuration table (INT 15h AH=C0h): length, model FCh (AT), submodel,
# revision; feature byte 1: second 8259 (bit 6), RTC (bit 5); feature bytes 2-5: none.
        .globl system_config
system_config:
        .word   8
        .byte   0xFC, 0x01, 0x00
        .byte   0x60, 0x00, 0x00, 0x00, 0x00

# The IVT entries POST points at the handlers: vector, handler offset; 0 ends the list.
        .globl service_vectors
service_vectors:
        .byte   0x08
        .word   irq0_handler
        .byte   0x10
        .word   int10_handler
        .byte   0x11
        .word   int11_handler
        .byte   0x12
        .word   int12_handler
        .byte   0x13
        .word   int13_handler
        .byte   0x15
        .word   int15_handler
        .byte   0x16
        .word   int16_handler
        .byte   0x18
        .word   int18_handler
        .byte   0x19
        .word   int19_handler
        .byte   0x1A
        .word   int1a_handler
        .byte   0x1E
        .word   floppy_dpt
        .byte   0

# Reaches RAM above 16 MiB at once, before anything asks how much RAM there is: with
# `--mem 8G --x-ram-delay-ms 200`, each part's first access reaches RAM that KVM does not
# know yet (src/ram_gate.rs). PARTS (a bit mask, --defsym; default all) selects:
#   1: data: writes patterns at 64 MiB and at the top of the RAM below 4 GiB (3 GiB - 4),
#      reads them back
#   2: copied code: copies a few instructions to 80 MiB and calls them
#   4: above 4 GiB: long mode, identity page tables in low RAM mapping 0-2 MiB and
#      4 GiB + 2 MiB (2 MiB pages); writes a pattern at 4 GiB + 2 MiB and reads it back
#      (this software KVM does not run 32-bit PAE paging; long mode it does)
#   8: fetch: jumps to 96 MiB, never written (zeros: `add [eax], al` with EAX at a scratch
#      byte), through a code segment whose limit ends 4 KiB later; the #GP at the limit
#      comes back here
#  16: reboot (`--reboot`), RAM kept: the first boot writes a mark at 64 MiB and resets
#      through port 0xCF9; the second finds it there
#  32: reboot before any RAM above 16 MiB is touched: the first boot resets at once, the
#      second writes and reads 64 MiB
# Success: debug-exit 0x10 (exit code 33); a failed check leaves with 0x20 + n. A boot
# mark at 0x600 (low RAM, kept across the reset) tells the boots apart.
        .include "common.inc"
        .include "pmode.inc"
        .ifndef PARTS
        .set    PARTS, 15
        .endif
        .set    IDT, 0x6000
        .set    SCRATCH, 0x7800
        .set    BOOTED, 0x600
        .set    BOOT_MARK, 0x746F6F62           # "boot"
        .macro  fail n
        mov     al, 0x20 + \n
        out     DEBUG_EXIT, al
        .endm
start:
        enter_pmode
        .code32
pm_start:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, 0x7000
        cld
        lgdt    [0xF0000 + gdt2_desc]

        .if     PARTS & 48
        cmp     dword ptr [BOOTED], BOOT_MARK
        je      2f
        mov     dword ptr [BOOTED], BOOT_MARK
        .if     PARTS & 16
        mov     dword ptr [0x4000000], BOOT_MARK
        .endif
        mov     dx, 0xCF9
        mov     al, 0x06
        out     dx, al
        fail    8                               # not reached
2:
        .if     PARTS & 32
        mov     dword ptr [0x4000000], BOOT_MARK
        .endif
        cmp     dword ptr [0x4000000], BOOT_MARK
        je      1f
        fail    9
1:
        .endif

        .if     PARTS & 1
        mov     dword ptr [0x4000000], 0x600DF00D
        mov     dword ptr [0xBFFFFFFC], 0x7E57AB1E
        cmp     dword ptr [0x4000000], 0x600DF00D
        je      1f
        fail    1
1:      cmp     dword ptr [0xBFFFFFFC], 0x7E57AB1E
        je      1f
        fail    2
1:
        .endif

        .if     PARTS & 2
        mov     esi, offset code + 0xF0000
        mov     edi, 0x5000000
        mov     ecx, code_end - code
        rep     movsb
        xor     eax, eax
        mov     ebx, 0x5000000
        call    ebx
        cmp     eax, 0x12345678
        je      1f
        fail    3
1:
        .endif

        .if     PARTS & 8
        # #GP (13) -> gp_handler, a 32-bit interrupt gate in the IDT at 0x6000.
        mov     edi, IDT
        mov     ecx, 0x100
        xor     eax, eax
        rep     stosd
        mov     eax, offset gp_handler + 0xF0000
        mov     word ptr [IDT + 13 * 8], ax
        mov     word ptr [IDT + 13 * 8 + 2], 0x08
        mov     word ptr [IDT + 13 * 8 + 4], 0x8E00
        shr     eax, 16
        mov     word ptr [IDT + 13 * 8 + 6], ax
        lidt    [0xF0000 + idt_desc]
        mov     byte ptr [SCRATCH], 0
        mov     eax, SCRATCH
        .byte   0xEA                    # jmp far 0x18:0x6000000
        .long   0x6000000
        .word   0x18
        .endif
gp_back:

        .if     PARTS & 4
        # PML4 0x1000, PDPT 0x2000, page directories 0x3000 (0-1 GiB), 0x4000 (4-5 GiB).
        mov     edi, 0x1000
        mov     ecx, 0x4000 / 4
        xor     eax, eax
        rep     stosd
        mov     dword ptr [0x1000], 0x2003
        mov     dword ptr [0x2000], 0x3003
        mov     dword ptr [0x2000 + 4 * 8], 0x4003
        mov     dword ptr [0x3000], 0x83
        mov     dword ptr [0x4000 + 8], 0x200083
        mov     dword ptr [0x4000 + 8 + 4], 1
        mov     eax, cr4
        or      eax, 0x20
        mov     cr4, eax
        mov     eax, 0x1000
        mov     cr3, eax
        mov     ecx, 0xC0000080
        rdmsr
        or      eax, 0x100
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000000
        mov     cr0, eax
        .byte   0xEA                    # jmp far 0x20:lm64
        .long   0xF0000 + lm64
        .word   0x20
        .endif

        exit    0x10

# Back from 96 MiB: the #GP of the code segment's limit. The stack holds the error code,
# EIP and CS: EIP must be the first byte past the 4 KiB of zeros, CS the limited segment.
gp_handler:
        cmp     dword ptr [esp + 4], 0x6001000
        je      1f
        fail    5
1:      cmp     word ptr [esp + 8], 0x18
        je      1f
        fail    6
1:      cmp     byte ptr [SCRATCH], 0
        je      1f
        fail    7
1:      mov     esp, 0x7000
        jmp     gp_back

        .code64
lm64:
        mov     rax, 0x100200010
        mov     dword ptr [rax], 0xABCD1234
        cmp     dword ptr [rax], 0xABCD1234
        je      1f
        fail    4
1:      exit    0x10
        .code32

# Copied to 80 MiB and called there.
code:   mov     eax, 0x12345678
        ret
code_end:

        gdt_table
        .balign 8
# The same GDT, with 0x18: code, base 0, 4 KiB pages, limit 0x6000 pages (ends at 96 MiB +
# 4 KiB - 1), 32-bit; 0x20: 64-bit code.
gdt2:   .quad   0
        .quad   0x00CF9B000000FFFF
        .quad   0x00CF93000000FFFF
        .quad   0x00C09B0000006000
        .quad   0x00AF9B000000FFFF
gdt2_desc:
        .word   gdt2_desc - gdt2 - 1
        .long   0xF0000 + gdt2
idt_desc:
        .word   0x7FF
        .long   IDT

# A synthetic ELF vmlinux: the 64-bit entry of the Linux boot protocol (RSI = the zero
# page), and with PVH=1 a Xen PVH note whose 32-bit entry reports hvm_start_info. Each
# entry reports on COM1 and leaves through debug-exit: 64-bit 0x64, PVH 0x50.
        .intel_syntax noprefix
        .include "kprint.inc"
        .include "bootparams.inc"
        .text
        .code64
        .globl  startup_64
startup_64:
        mov     ebp, esi
        show    64, mode, 0x64
        report  64, rbx
        kexit   0x64
        cli
        hlt
        kprint_routines 64

        .code32
pvh_start:
        mov     ebp, ebx
        show    32, mode, 0x9
        show    32, ebx, ebp
        mov     bx, cs
        movzx   ebx, bx
        show    32, cs, ebx
        mov     ebx, cr0
        show    32, cr0, ebx
        show    32, pvh_magic, [ebp]
        show    32, pvh_version, [ebp + 4]
        mov     ebx, [ebp + 24]
        show_str 32, cmdline
        show    32, rsdp, [ebp + 32]
        show    32, nr_modules, [ebp + 12]
        mov     edi, [ebp + 16]
        show    32, mod_paddr, [edi]
        mov     edi, [ebp + 16]
        show    32, mod_size, [edi + 8]
        show    32, memmap_entries, [ebp + 48]
        mov     dword ptr [e820_i], 0
1:      mov     eax, [e820_i]
        cmp     eax, [ebp + 48]
        jae     2f
        imul    eax, eax, 24
        mov     edi, [ebp + 40]
        add     edi, eax
        mov     [e820_p], edi
        show    32, e820_base, [edi]
        mov     edi, [e820_p]
        show    32, e820_len, [edi + 8]
        mov     edi, [e820_p]
        show    32, e820_type, [edi + 16]
        inc     dword ptr [e820_i]
        jmp     1b
2:      kexit   0x50
        cli
        hlt
        kprint_routines 32

        .data
        report_data

.if PVH
        .section .note.Xen, "a", @note
        .balign 4
        .long   4, 4, 18                        # "Xen", 4 bytes, XEN_ELFNOTE_PHYS32_ENTRY
        .asciz  "Xen"
        .long   pvh_start
.endif

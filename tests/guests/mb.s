# A multiboot test kernel: version 1 (MB2=0) or 2 (MB2=1), ELF or with the header's load
# addresses (AOUT=1, linked to a flat binary). It reports the registers and every piece of
# the boot information on COM1 ("name=value" lines), then leaves through debug-exit 0x42.
        .intel_syntax noprefix
        .include "kprint.inc"
        .code32
        .text
        .globl  _start
_start:
        jmp     main

        .balign 8
header:
.if MB2
        .long   0xE85250D6, 0, header_end - header
        .long   -(0xE85250D6 + (header_end - header))
        .word   1, 0                            # information request, required
        .long   8 + 4 * 6
        .long   1, 2, 3, 4, 5, 6
        .balign 8
 .if AOUT
        .word   2, 0                            # address
        .long   24, header, _start, _edata, _end
        .balign 8
        .word   3, 0                            # entry address
        .long   12, _start
        .balign 8
 .endif
        .word   0, 0                            # end
        .long   8
.else
        .set    FLAGS, 0x3 | (AOUT << 16)
        .long   0x1BADB002, FLAGS, -(0x1BADB002 + FLAGS)
        .long   header, _start, _edata, _end, _start
.endif
header_end:

main:
        mov     [magic], eax
        mov     ebp, ebx
        show    32, magic, [magic]
        show    32, info, ebp
        mov     bx, cs
        movzx   ebx, bx
        show    32, cs, ebx
        mov     bx, ds
        movzx   ebx, bx
        show    32, ds, ebx
        pushfd
        pop     ebx
        show    32, eflags, ebx
        mov     ebx, cr0
        show    32, cr0, ebx
.if MB2
        call    report2
.else
        call    report1
.endif
        kexit   0x42
        cli
        hlt

.if MB2
# The information tags, in order.
report2:
        lea     eax, [ebp + 8]
        mov     [cursor], eax
1:      mov     edi, [cursor]
        mov     ebx, [edi]
        show    32, tag, ebx
        mov     edi, [cursor]
        mov     eax, [edi]
        test    eax, eax
        jz      report2_done
        cmp     eax, 1
        jne     2f
        lea     ebx, [edi + 8]
        show_str 32, cmdline
        jmp     8f
2:      cmp     eax, 2
        jne     3f
        lea     ebx, [edi + 8]
        show_str 32, loader
        jmp     8f
3:      cmp     eax, 3
        jne     4f
        show    32, mod_start, [edi + 8]
        mov     edi, [cursor]
        show    32, mod_end, [edi + 12]
        mov     edi, [cursor]
        mov     ebx, [edi + 8]
        show    32, mod_data, [ebx]
        mov     edi, [cursor]
        lea     ebx, [edi + 16]
        show_str 32, mod_string
        jmp     8f
4:      cmp     eax, 4
        jne     5f
        show    32, mem_lower, [edi + 8]
        mov     edi, [cursor]
        show    32, mem_upper, [edi + 12]
        jmp     8f
5:      cmp     eax, 6
        jne     6f
        mov     eax, [edi + 4]
        add     eax, edi
        mov     [limit], eax
        lea     eax, [edi + 16]
        mov     [entry], eax
7:      mov     edi, [entry]
        cmp     edi, [limit]
        jae     8f
        show    32, mmap_base, [edi]
        mov     edi, [entry]
        show    32, mmap_len, [edi + 8]
        mov     edi, [entry]
        show    32, mmap_type, [edi + 16]
        add     dword ptr [entry], 24
        jmp     7b
6:      cmp     eax, 14
        jne     8f
        show    32, rsdp, [edi + 8]
8:      mov     edi, [cursor]
        mov     eax, [edi + 4]
        add     eax, 7
        and     eax, -8
        add     [cursor], eax
        jmp     1b
report2_done:
        ret
.else
# The multiboot 1 information block.
report1:
        show    32, flags, [ebp]
        show    32, mem_lower, [ebp + 4]
        show    32, mem_upper, [ebp + 8]
        show    32, boot_device, [ebp + 12]
        mov     ebx, [ebp + 16]
        show_str 32, cmdline
        mov     ebx, [ebp + 64]
        show_str 32, loader
        show    32, mods_count, [ebp + 20]
        mov     eax, [ebp + 24]
        mov     [entry], eax
        mov     dword ptr [count], 0
1:      mov     eax, [count]
        cmp     eax, [ebp + 20]
        jae     2f
        mov     edi, [entry]
        show    32, mod_start, [edi]
        mov     edi, [entry]
        show    32, mod_end, [edi + 4]
        mov     edi, [entry]
        mov     ebx, [edi]
        show    32, mod_data, [ebx]
        mov     edi, [entry]
        mov     ebx, [edi + 8]
        show_str 32, mod_string
        add     dword ptr [entry], 16
        inc     dword ptr [count]
        jmp     1b
2:      mov     eax, [ebp + 48]
        mov     [entry], eax
        add     eax, [ebp + 44]
        mov     [limit], eax
3:      mov     edi, [entry]
        cmp     edi, [limit]
        jae     4f
        show    32, mmap_base, [edi + 4]
        mov     edi, [entry]
        show    32, mmap_len, [edi + 12]
        mov     edi, [entry]
        show    32, mmap_type, [edi + 20]
        mov     edi, [entry]
        mov     eax, [edi]
        add     eax, 4
        add     [entry], eax
        jmp     3b
4:      ret
.endif

        kprint_routines 32

        .data
magic:  .long   0
cursor: .long   0
entry:  .long   0
limit:  .long   0
count:  .long   0

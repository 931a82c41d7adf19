# A multiboot kernel for --reboot: the first boot leaves a mark in low RAM, overwrites its
# own data and its module's first word, and resets through port 0xCF9. After the reboot the
# VMM must have loaded the kernel and the module again: debug-exit 0x21 when both are back
# as they were, 0x22 when not.
        .intel_syntax noprefix
        .code32
        .text
        .globl  _start
        .set    MARK, 0x7F00
_start:
        jmp     main
        .balign 4
header:
        .set    FLAGS, 0x10003
        .long   0x1BADB002, FLAGS, -(0x1BADB002 + FLAGS)
        .long   header, _start, _edata, _end, _start
main:
        mov     esi, [ebx + 24]                 # the first module's entry
        mov     esi, [esi]                      # its start
        cmp     dword ptr [MARK], 0x746F6F62    # "boot"
        je      again
        mov     dword ptr [MARK], 0x746F6F62
        mov     dword ptr [marker], 0xDEADDEAD
        mov     dword ptr [esi], 0xDEADDEAD
        mov     dx, 0xCF9
        mov     al, 0x06
        out     dx, al
        jmp     .
again:
        mov     al, 0x22
        cmp     dword ptr [marker], 0x11111111
        jne     1f
        cmp     dword ptr [esi], 0x75646F6D     # "modu"
        jne     1f
        mov     al, 0x21
1:      out     0xF4, al
        jmp     .

        .data
marker: .long   0x11111111

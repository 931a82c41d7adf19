# Reads and writes where nothing is: unassigned ports, the VGA hole, the PCI hole, the ROM.
# Each failed check leaves through debug-exit with its own number (0x20 + n); success
# prints a line and leaves with 0x10.
        .include "common.inc"
        .include "pmode.inc"
        .macro  fail n
        mov     al, 0x20 + \n
        out     DEBUG_EXIT, al
        .endm
start:
        mov     dx, 0x1234
        in      al, dx
        cmp     al, 0xFF
        je      1f
        fail    1
1:      in      ax, dx
        cmp     ax, 0xFFFF
        je      1f
        fail    2
1:      in      eax, dx
        cmp     eax, 0xFFFFFFFF
        je      1f
        fail    3
1:      mov     al, 0x55
        out     dx, al
        out     0x80, al
        mov     dx, 0xCFC
        mov     eax, 0x12345678
        out     dx, eax
        enter_pmode
        .code32
pm_start:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, 0x7000
        # VGA hole: unmapped, reads all-ones, writes vanish.
        mov     dword ptr [0xA0000], 0x11111111
        cmp     dword ptr [0xA0000], 0xFFFFFFFF
        je      1f
        fail    4
1:      # An empty spot in the PCI hole.
        mov     dword ptr [0xE0000000], 0x22222222
        cmp     dword ptr [0xE0000000], 0xFFFFFFFF
        je      1f
        fail    5
1:      # The ROM, through both of its windows: writes are dropped.
        mov     eax, [0xFFFFF000]
        mov     dword ptr [0xFFFFF000], 0x33333333
        cmp     [0xFFFFF000], eax
        je      1f
        fail    6
1:      mov     eax, [0xFF000]
        mov     dword ptr [0xFF000], 0x44444444
        cmp     [0xFF000], eax
        je      1f
        fail    7
1:      # RAM still works.
        mov     dword ptr [0x100000], 0x55555555
        cmp     dword ptr [0x100000], 0x55555555
        je      1f
        fail    8
1:      mov     esi, offset msg + 0xF0000
        mov     dx, COM1
2:      mov     al, [esi]
        test    al, al
        jz      3f
        out     dx, al
        inc     esi
        jmp     2b
3:      mov     al, 0x10
        out     DEBUG_EXIT, al
msg:    .asciz  "wild accesses survived\r\n"
        .code16
        gdt_table

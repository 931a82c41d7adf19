# A PAM change while another vCPU executes from the shadowed segment: the AP spins in this
# ROM (segment F000), counting in RAM, while the BSP switches PAM0's 0xF0000 segment between
# ROM and write-only RAM (both read the ROM) SWITCHES times. The AP must never see a hole:
# debug-exit 0x21 when it is still counting afterwards, 0x22 when it stopped, 0x23 when it
# never started; a hole shows as an emulation failure instead.
        .include "common.inc"
        .include "pmode.inc"
        .set    COUNTER, 0x600
        .set    TRAMPOLINE, 0x8000              # SIPI vector 0x08
.ifndef SWITCHES
        .set    SWITCHES, 500
.endif
start:
        cli
        xor     ax, ax
        mov     es, ax
        mov     dword ptr es:[COUNTER], 0
        copy_code trampoline, trampoline_end, TRAMPOLINE
        enter_pmode
        .code32
pm_start:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, 0x6000
        mov     dword ptr [0xFEE00310], 0
        mov     dword ptr [0xFEE00300], 0x000C4500      # INIT, all but self
        mov     dword ptr [0xFEE00300], 0x000C4608      # SIPI, vector 0x08
        mov     dword ptr [0xFEE00300], 0x000C4608
        mov     ecx, 5000000
1:      cmp     dword ptr [COUNTER], 0
        jne     2f
        loop    1b
        exit    0x23
2:      mov     ecx, SWITCHES
3:      mov     dx, 0xCF8
        mov     eax, 0x80000058
        out     dx, eax
        mov     dx, 0xCFD                       # PAM0 (0x59): bits 5:4 are 0xF0000-0xFFFFF
        mov     al, 0x20                        # write-only RAM: reads still the ROM
        out     dx, al
        mov     al, 0x00                        # ROM
        out     dx, al
        loop    3b
        # The AP still counts.
        mov     ebx, [COUNTER]
        mov     ecx, 1000000
4:      cmp     [COUNTER], ebx
        jne     5f
        loop    4b
        exit    0x22
5:      exit    0x21

        .code16
# The AP's first instructions, at 0800:0000: into the ROM, where it spins.
trampoline:
        .byte   0xEA                            # jmp far F000:ap_loop
        .word   ap_loop
        .word   0xF000
trampoline_end:
ap_loop:
        xor     ax, ax
        mov     ds, ax
1:      inc     dword ptr [COUNTER]
        jmp     1b

        gdt_table

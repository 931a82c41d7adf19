# Wakes every AP with INIT-SIPI-SIPI through the local APIC. Each AP records its APIC ID
# (from CPUID) in a bitmap and counts itself, then halts with interrupts off. The BSP waits
# for the count fw_cfg announces (or gives up), prints
#   aps NN ids XXXXXXXX
# in hex, and halts too.
# With --defsym EXIT_CODE=N the BSP halts with interrupts off right after the SIPIs, and the
# first AP to run leaves through debug-exit with N: the guest lives on in its APs.
        .include "common.inc"
        .include "pmode.inc"
        .set    COUNT, 0x7000           # word: APs that came up
        .set    IDS, 0x7010             # dword: bit n set by the AP with APIC ID n
        .set    TRAMPOLINE, 0x8000      # SIPI vector 0x08
start:
        cli
        xor     ax, ax
        mov     es, ax
        mov     word ptr es:[COUNT], 0
        mov     dword ptr es:[IDS], 0
        # The AP trampoline must be in RAM below 1 MiB: copy it.
        copy_code trampoline, trampoline_end, TRAMPOLINE
        # The CPU count from fw_cfg (key 0x05, 16-bit).
        mov     dx, 0x510
        mov     ax, 0x05
        out     dx, ax
        inc     dx
        in      al, dx
        mov     bl, al
        in      al, dx
        mov     bh, al
        dec     bx                      # APs expected
        mov     es:[0x7020], bx
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
        mov     dword ptr [0xFEE00300], 0x000C4608      # SIPI again
        .ifdef  EXIT_CODE
4:      hlt
        jmp     4b
        .endif
        mov     ecx, 2000000
1:      mov     ax, [COUNT]
        cmp     ax, [0x7020]
        jae     2f
        pause
        loop    1b
2:      mov     esi, offset aps + 0xF0000
        call    print32
        mov     eax, [COUNT]
        shl     eax, 24                 # two hex digits of the count
        mov     ecx, 2
        call    hex32
        mov     esi, offset ids + 0xF0000
        call    print32
        mov     eax, [IDS]
        mov     ecx, 8
        call    hex32
        mov     esi, offset crlf + 0xF0000
        call    print32
3:      hlt
        jmp     3b

# print32: the string at ESI to COM1.
print32:
        mov     dx, COM1
1:      mov     al, [esi]
        test    al, al
        jz      2f
        out     dx, al
        inc     esi
        jmp     1b
2:      ret

# hex32: the top ECX nibbles of EAX in hex.
hex32:
        mov     dx, COM1
1:      rol     eax, 4
        mov     ebx, eax
        and     ebx, 0x0F
        mov     bl, [ebx + hex_digits + 0xF0000]
        xchg    eax, ebx
        out     dx, al
        xchg    eax, ebx
        loop    1b
        ret

        .code16
# The AP's first instructions, at 0800:0000 in real mode; position-independent.
trampoline:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     eax, 1
        cpuid
        shr     ebx, 24
        lock bts dword ptr [IDS], ebx
        lock inc word ptr [COUNT]
        .ifdef  EXIT_CODE
        exit    EXIT_CODE
        .endif
1:      hlt
        jmp     1b
trampoline_end:

hex_digits: .ascii "0123456789abcdef"
aps:    .asciz  "aps "
ids:    .asciz  " ids "
crlf:   .asciz  "\r\n"
        gdt_table

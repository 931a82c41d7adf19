# A boot sector (booted by the embedded firmware's INT 19h from --disk) that loads its
# second stage (LBA 1-7) to 0:7E00, then, first thing, does what MODE (a bit mask, --defsym;
# default all) selects:
#   1: INT 15h E820h, the whole map: "e820 BASE LENGTH TYPE" (16, 16, 2 hex digits)
#   2: INT 15h E801h: "e801 AX BX CX DX" (4 hex digits each)
#   4: INT 15h 88h: "88 AX"
#   8: INT 13h AH=42h reads LBA 1 (the second stage's first sector, which starts with
#      position-independent 32-bit code) to the flat address 64 MiB, as a boot loader loads
#      its kernel high; then protected mode and a jump there, without asking for the memory
#      map. That code leaves through debug-exit with 0x11 (exit code 35).
# Otherwise it leaves with 0x10 (exit code 33); 0x20 + n when call n fails.
        .code16
        .intel_syntax noprefix
        .set    DEBUG_EXIT, 0xF4
        .set    COM1, 0x3F8
        .set    BUF, 0x9000
        .set    PACKET, 0x8F00
        .set    DRIVE, 0x8DF0
        .set    HIGH, 0x4000000
        .ifndef MODE
        .set    MODE, 15
        .endif

        .section .boot, "ax"
        .globl  start
start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00
        mov     [DRIVE], dl
        mov     ax, offset stage2_sectors
        mov     ah, 0x02
        mov     cx, 0x0002
        xor     dh, dh
        mov     bx, 0x7E00
        int     0x13
        jnc     stage2
        mov     al, 0x21
        out     DEBUG_EXIT, al

        .text
# The first bytes of LBA 1: run at 64 MiB in 32-bit protected mode.
        .code32
high_code:
        mov     al, 0x11
        out     DEBUG_EXIT, al
1:      hlt
        jmp     1b
        .code16

stage2:
        .if     MODE & 1
        xor     ebx, ebx
1:      mov     eax, 0xE820
        mov     edx, 0x534D4150
        mov     ecx, 20
        mov     di, BUF
        int     0x15
        jnc     2f
        mov     al, 0x22
        out     DEBUG_EXIT, al
2:      mov     si, offset e820_msg
        call    print
        mov     si, BUF
        call    hex64
        call    space
        mov     si, BUF + 8
        call    hex64
        call    space
        mov     al, [BUF + 16]
        call    hex8
        call    crlf
        test    ebx, ebx
        jnz     1b
        .endif

        .if     MODE & 2
        mov     ax, 0xE801
        int     0x15
        jnc     1f
        mov     al, 0x23
        out     DEBUG_EXIT, al
1:      mov     si, offset e801_msg
        call    print
        call    hex16
        call    space
        mov     ax, bx
        call    hex16
        call    space
        mov     ax, cx
        call    hex16
        call    space
        mov     ax, dx
        call    hex16
        call    crlf
        .endif

        .if     MODE & 4
        mov     ah, 0x88
        int     0x15
        jnc     1f
        mov     al, 0x24
        out     DEBUG_EXIT, al
1:      mov     si, offset e88_msg
        call    print
        call    hex16
        call    crlf
        .endif

        .if     MODE & 8
        # A 24-byte packet: one sector from LBA 1 to the flat address in its last field
        # (buffer FFFF:FFFF).
        mov     di, PACKET
        mov     word ptr [di], 24
        mov     word ptr [di + 2], 1
        mov     dword ptr [di + 4], 0xFFFFFFFF
        mov     dword ptr [di + 8], 1
        mov     dword ptr [di + 12], 0
        mov     dword ptr [di + 16], HIGH
        mov     dword ptr [di + 20], 0
        mov     si, di
        mov     ah, 0x42
        mov     dl, [DRIVE]
        int     0x13
        jnc     1f
        mov     al, 0x25
        out     DEBUG_EXIT, al
1:      cli
        lgdt    [gdt_desc]
        mov     eax, cr0
        or      eax, 1
        mov     cr0, eax
        .byte   0x66, 0xEA                      # jmp far dword 0x08:pm32
        .long   pm32
        .word   0x08
        .code32
pm32:   mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, 0x7C00
        mov     eax, HIGH
        jmp     eax
        .code16
        .endif

        mov     al, 0x10
        out     DEBUG_EXIT, al
1:      hlt
        jmp     1b

# print: the NUL-terminated string at DS:SI.
print:
        push    ax
1:      lodsb
        test    al, al
        jz      2f
        call    putc
        jmp     1b
2:      pop     ax
        ret

# hex64: the little-endian quadword at DS:SI; hex16: AX; hex8: AL.
hex64:
        push    cx
        mov     cx, 8
        add     si, 7
1:      mov     al, [si]
        call    hex8
        dec     si
        loop    1b
        pop     cx
        ret
hex16:
        push    ax
        mov     al, ah
        call    hex8
        pop     ax
hex8:
        push    ax
        shr     al, 4
        call    nibble
        pop     ax
        and     al, 0x0F
nibble:
        add     al, '0'
        cmp     al, '9'
        jbe     putc
        add     al, 'a' - '9' - 1
putc:
        push    dx
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret
space:
        mov     al, ' '
        jmp     putc
crlf:
        mov     al, 13
        call    putc
        mov     al, 10
        jmp     putc

        .balign 8
gdt:    .quad   0
        .quad   0x00CF9B000000FFFF
        .quad   0x00CF93000000FFFF
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt
e820_msg:   .asciz "e820 "
e801_msg:   .asciz "e801 "
e88_msg:    .asciz "88 "

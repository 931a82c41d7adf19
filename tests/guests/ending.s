# A boot sector (booted from --disk by the embedded firmware) that ends the VM one way or
# another, for the exit-path tests (tests/load.rs). In order it:
#   writes LBA 1-4 through INT 13h AH=03h, sector n filled with the byte 0xD0 + n;
#   prints LINES numbered lines (default 50) on COM1, polling LSR.THRE:
#     line 0000 abcdefghijklmnopqrstuvwxyz0123456789
#   prints "ending ready", then "tail" without a line end;
#   ends as END says (set with --defsym):
#     1 halt with interrupts off, 2 ACPI power-off (S5), 3 reset through 0xCF9,
#     4 debug-exit with 0x31, 5 triple fault (an interrupt in protected mode with an empty IDT),
#     6 spin with interrupts off (stopped from outside: timeout or a signal).
# A failed disk write leaves through debug-exit with 0x3E before anything is printed.
        .code16
        .intel_syntax noprefix
        .set    COM1, 0x3F8
        .set    DEBUG_EXIT, 0xF4
        .set    BUF, 0x9000
        .set    WRITTEN, 4
        .ifndef LINES
        .set    LINES, 50
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
        # The sectors to write: WRITTEN sectors at BUF, sector n (from 1) filled with 0xD0 + n.
        mov     bp, dx                          # DL: the boot drive
        mov     di, BUF
        mov     al, 0xD1
        mov     bx, WRITTEN
1:      mov     cx, 512
        rep     stosb
        inc     al
        dec     bx
        jnz     1b
        mov     ax, 0x0300 + WRITTEN            # write, from cylinder 0 head 0 sector 2
        mov     cx, 0x0002
        mov     dx, bp
        xor     dh, dh
        mov     bx, BUF
        int     0x13
        jnc     2f
        mov     al, 0x3E
        out     DEBUG_EXIT, al
2:      xor     bx, bx
3:      cmp     bx, LINES
        jae     4f
        mov     si, offset prefix
        call    puts
        mov     ax, bx
        call    hex16
        mov     si, offset body
        call    puts
        inc     bx
        jmp     3b
4:      mov     si, offset ready
        call    puts
        mov     si, offset tail
        call    puts

        .if     END == 1
        cli
        hlt
        .elseif END == 2
        mov     dx, 0x604
        in      ax, dx
        and     ax, 0xC3FF                      # SLP_TYP = S5 (0)
        or      ax, 0x2000                      # SLP_EN
        out     dx, ax
        .elseif END == 3
        mov     dx, 0xCF9
        mov     al, 0x06                        # RST_CPU | SYS_RST
        out     dx, al
        .elseif END == 4
        mov     al, 0x31
        out     DEBUG_EXIT, al
        .elseif END == 5
        # Protected mode with an empty IDT: int3 raises #GP, then #DF, then shuts down.
        lgdt    [gdt_desc]
        mov     eax, cr0
        or      eax, 1
        mov     cr0, eax
        .byte   0x66, 0xEA                      # jmp far dword 0x08:pm
        .long   pm
        .word   0x08
        .code32
pm:     lidt    [empty_idt]
        int3
        .code16
        .endif
        # Spins with interrupts off: the way END 6 ends, and whatever the others leave.
        cli
5:      jmp     5b

# putc: AL to COM1 once LSR.THRE is set.
putc:
        push    dx
        push    ax
        mov     dx, COM1 + 5
1:      in      al, dx
        test    al, 0x20
        jz      1b
        pop     ax
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret

# puts: the NUL-terminated string at DS:SI.
puts:
        push    ax
1:      lodsb
        test    al, al
        jz      2f
        call    putc
        jmp     1b
2:      pop     ax
        ret

# hex16: AX as four lowercase hex digits.
hex16:
        push    cx
        push    dx
        mov     cx, 4
        mov     dx, ax
1:      rol     dx, 4
        mov     al, dl
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     2f
        add     al, 'a' - '9' - 1
2:      call    putc
        loop    1b
        pop     dx
        pop     cx
        ret

        .balign 8
gdt:    .quad   0
        .quad   0x00CF9B000000FFFF              # 0x08: code, flat, 32-bit
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt
empty_idt:
        .word   0
        .long   0
prefix: .asciz  "line "
body:   .asciz  " abcdefghijklmnopqrstuvwxyz0123456789\r\n"
ready:  .asciz  "ending ready\r\n"
tail:   .asciz  "tail"

# Console output: lines are built in LINE_BUF and handed to the VMM whole (the print service
# at port 0xEA: DS:SI, CX bytes), one VM exit per line.
        .code16
        .intel_syntax noprefix
        .text
        .include "layout.inc"

# line_start: DI = start of the line buffer.
        .globl line_start
line_start:
        mov     di, LINE_BUF
        ret

# line_str: append the string at DS:SI (a length byte, then the bytes; see `lstr` in
# layout.inc) to ES:DI. One REP MOVSB: where real mode is emulated instruction by
# instruction, a copied byte costs a fraction of a loop's five instructions.
        .globl line_str
line_str:
        push    ax
        push    cx
        lodsb
        movzx   cx, al
        rep movsb
        pop     cx
        pop     ax
        ret

# line_hex64: append the u64 at ES:BX as sixteen hex digits, two per table lookup
# (`hex_pairs`), most significant byte first.
        .globl line_hex64
line_hex64:
        push    ax
        push    si
        .irp    i, 7, 6, 5, 4, 3, 2, 1, 0
        movzx   si, byte ptr es:[bx + \i]
        add     si, si
        mov     ax, cs:[si + hex_pairs]
        stosw
        .endr
        pop     si
        pop     ax
        ret

# line_byte: append AL as two hex digits (a BCD byte as its two decimal digits).
        .globl line_byte
line_byte:
        push    si
        movzx   si, al
        add     si, si
        mov     ax, cs:[si + hex_pairs]
        stosw
        pop     si
        ret

# line_dec: append AX in decimal.
        .globl line_dec
line_dec:
        push    ax
        push    cx
        push    dx
        push    bx
        mov     bx, 10
        xor     cx, cx
1:      xor     dx, dx
        div     bx
        push    dx
        inc     cx
        test    ax, ax
        jnz     1b
2:      pop     ax
        add     al, '0'
        stosb
        loop    2b
        pop     bx
        pop     dx
        pop     cx
        pop     ax
        ret

# line_crlf: append CR LF; the text goes out with the next line_send (several lines in one
# VM exit).
        .globl line_crlf
line_crlf:
        mov     ax, 0x0A0D
        stosw
        ret

# line_end: append CR LF and send the line to COM1.
# line_send: send the buffer as it is. Both restart the buffer.
        .globl line_end, line_send
line_end:
        call    line_crlf
line_send:
        push    ds
        push    si
        xor     ax, ax
        mov     ds, ax
        mov     si, LINE_BUF
        mov     cx, di
        sub     cx, si
        .globl  print_out
print_out:
        out     0xEA, al
        pop     si
        pop     ds
        mov     di, LINE_BUF
        ret

# puts: print the string at DS:SI (`lstr`) as it is.
        .globl puts
puts:
        call    line_start
        call    line_str
        jmp     line_send

        .section .rodata
# "00" to "ff": the two hex digits of each byte value.
hex_pairs:
        .irpc   hi, 0123456789abcdef
        .irpc   lo, 0123456789abcdef
        .ascii  "\hi\lo"
        .endr
        .endr

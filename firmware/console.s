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

# line_str: append the NUL-terminated string at DS:SI to ES:DI.
        .globl line_str
line_str:
        push    ax
1:      lodsb
        test    al, al
        jz      2f
        stosb
        jmp     1b
2:      pop     ax
        ret

# line_hex32: append EAX as eight hex digits.
        .globl line_hex32
line_hex32:
        push    ecx
        push    ebx
        mov     cx, 8
1:      rol     eax, 4
        mov     bx, ax
        and     bx, 0x0F
        mov     bl, cs:[bx + hex_digits]
        mov     es:[di], bl
        inc     di
        loop    1b
        pop     ebx
        pop     ecx
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

# line_end: append CR LF and send the line to COM1.
# line_send: send the line as it is. Both restart the line.
        .globl line_end, line_send
line_end:
        mov     ax, 0x0A0D
        stosw
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

# puts: print the NUL-terminated string at DS:SI as it is.
        .globl puts
puts:
        call    line_start
        call    line_str
        jmp     line_send

        .section .rodata
hex_digits:     .ascii "0123456789abcdef"

# Prints LINES numbered lines (set with --defsym) on COM1, polling LSR.THRE before every
# byte and counting the polls that found the transmitter busy; then prints that count and
# leaves through debug-exit with 0x21:
#   line 0000 abcdefghijklmnopqrstuvwxyz0123456789
#   ...
#   done busy 0000002a
# With --defsym STOP_WHEN_BUSY=1 it leaves through debug-exit with 0x22 instead, at the
# first poll that finds the transmitter busy.
        .include "common.inc"
start:
        cli
        xor     ebp, ebp                # polls that found THRE clear
        xor     bx, bx                  # the line number
next:   cmp     bx, LINES
        jae     done
        mov     si, offset prefix
        call    puts
        mov     ax, bx
        call    hex16
        mov     si, offset body
        call    puts
        inc     bx
        jmp     next
done:   mov     si, offset summary
        call    puts
        mov     eax, ebp
        shr     eax, 16
        call    hex16
        mov     ax, bp
        call    hex16
        mov     si, offset crlf
        call    puts
        exit    0x21

# putc: AL to COM1 once LSR.THRE is set; EBP counts the polls that found it clear.
putc:
        push    dx
        push    ax
        mov     dx, COM1 + 5
1:      in      al, dx
        test    al, 0x20
        jnz     2f
        inc     ebp
        .ifdef  STOP_WHEN_BUSY
        exit    0x22
        .endif
        jmp     1b
2:      pop     ax
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret

# puts: the NUL-terminated string at CS:SI.
puts:
        push    ax
1:      mov     al, cs:[si]
        test    al, al
        jz      2f
        call    putc
        inc     si
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

prefix: .asciz  "line "
body:   .asciz  " abcdefghijklmnopqrstuvwxyz0123456789\r\n"
summary: .asciz "done busy "
crlf:   .asciz  "\r\n"

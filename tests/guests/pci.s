# Enumerates PCI bus 0 through configuration mechanism #1 and prints one line per function:
#   pci DD.F VVVVDDDD CCSSPPRR HH
# (device.function, device:vendor id dword, class dword, header type), then "pci end".
        .include "common.inc"
start:
        cli
        xor     ebx, ebx                # bus 0, device/function in bits 15:8
1:      mov     eax, ebx
        or      eax, 0x80000000
        mov     dx, 0xCF8
        out     dx, eax
        mov     dx, 0xCFC
        in      eax, dx
        cmp     ax, 0xFFFF
        je      3f
        mov     ebp, eax                # vendor/device
        mov     si, offset tag
        call    print
        mov     eax, ebx
        shr     eax, 11                 # device number
        and     al, 0x1F
        call    hex8
        mov     al, '.'
        call    putc
        mov     eax, ebx
        shr     eax, 8
        and     al, 7
        add     al, '0'
        call    putc
        mov     al, ' '
        call    putc
        mov     eax, ebp
        call    hex32
        mov     al, ' '
        call    putc
        mov     eax, ebx
        or      eax, 0x80000008         # class, subclass, prog-if, revision
        mov     dx, 0xCF8
        out     dx, eax
        mov     dx, 0xCFC
        in      eax, dx
        call    hex32
        mov     al, ' '
        call    putc
        mov     eax, ebx
        or      eax, 0x8000000C         # header type in bits 23:16
        mov     dx, 0xCF8
        out     dx, eax
        mov     dx, 0xCFE               # a word read at offset 2 of the dword
        in      ax, dx
        mov     edi, eax
        call    hex8
        mov     si, offset crlf
        call    print
        # Only function 0 of a single-function device exists.
        test    bh, 7
        jnz     3f
        test    di, 0x80
        jnz     3f
        add     ebx, 0x700              # skip functions 1-7
3:      add     ebx, 0x100
        cmp     ebx, 0x10000
        jb      1b
        mov     si, offset done
        call    print
4:      hlt
        jmp     4b

putc:
        push    dx
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret
hex8:
        push    cx
        push    eax
        shl     eax, 24
        mov     cx, 2
        jmp     5f
hex32:
        push    cx
        push    eax
        mov     cx, 8
5:      rol     eax, 4
        push    eax
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     6f
        add     al, 'a' - '9' - 1
6:      call    putc
        pop     eax
        loop    5b
        pop     eax
        pop     cx
        ret

tag:    .asciz  "pci "
crlf:   .asciz  "\r\n"
done:   .asciz  "pci end\r\n"

# fw_cfg through its DMA interface: one VM exit per transfer.
        .code16
        .intel_syntax noprefix
        .text
        .include "layout.inc"

# fw_cfg_read: select key AX, read ECX bytes to linear EDI (below 1 MiB). CF on error.
# fw_cfg_read_more: read ECX more bytes of the selected item to linear EDI. CF on error.
        .globl fw_cfg_read, fw_cfg_read_more
fw_cfg_read:
        push    eax
        movzx   eax, ax
        shl     eax, 16
        or      eax, 0x0A                       # SELECT | READ
        jmp     1f
fw_cfg_read_more:
        push    eax
        mov     eax, 0x02                       # READ
1:      push    dx
        bswap   eax
        mov     es:[DMA_DESC], eax
        mov     eax, ecx
        bswap   eax
        mov     es:[DMA_DESC + 4], eax
        xor     eax, eax
        mov     es:[DMA_DESC + 8], eax
        mov     eax, edi
        bswap   eax
        mov     es:[DMA_DESC + 12], eax
        mov     dx, 0x514
        xor     eax, eax
        out     dx, eax                         # address, high half
        mov     dx, 0x518
        mov     eax, DMA_DESC
        bswap   eax
        out     dx, eax                         # address, low half: go
        pop     dx
        cmp     dword ptr es:[DMA_DESC], 1      # control 0: done; else error
        cmc
        pop     eax
        ret

# fw_cfg_find: look up the file named by the string at DS:SI.
# Returns AX = key and ECX = size, or CF when it is absent.
        .globl fw_cfg_find
fw_cfg_find:
        push    edi
        push    bx
        push    bp
        mov     ax, 0x19                        # FILE_DIR
        mov     ecx, 4
        mov     edi, FW_DIR
        call    fw_cfg_read
        jc      3f
        mov     ecx, es:[FW_DIR]
        bswap   ecx
        cmp     ecx, FW_DIR_MAX_FILES
        jbe     1f
        mov     ecx, FW_DIR_MAX_FILES
1:      mov     bp, cx
        test    bp, bp
        jz      3f
        shl     ecx, 6
        mov     edi, FW_DIR + 4
        call    fw_cfg_read_more
        jc      3f
        mov     bx, FW_DIR + 4
2:      push    si
        lea     di, [bx + 8]
4:      mov     al, [si]
        cmp     al, es:[di]
        jne     5f
        inc     si
        inc     di
        test    al, al
        jnz     4b
        pop     si
        mov     ax, es:[bx + 4]
        xchg    al, ah
        mov     ecx, es:[bx]
        bswap   ecx
        clc
        jmp     6f
5:      pop     si
        add     bx, 64
        dec     bp
        jnz     2b
3:      stc
6:      pop     bp
        pop     bx
        pop     edi
        ret

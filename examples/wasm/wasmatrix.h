/* WasmMatrix host API for guests: the "wasmatrix" import module.
 *
 * Every call returns an int32 status: >= 0 success (a byte count where the
 * call produces data), < 0 one of the WMX_E* codes below. See docs/ABI.md.
 */
#ifndef WASMATRIX_H
#define WASMATRIX_H

#include <stddef.h>
#include <stdint.h>

#define WMX_ENOTFOUND (-1)    /* key does not exist */
#define WMX_EDENIED (-2)      /* capability not granted (audited) */
#define WMX_EINVAL (-3)       /* bad pointer, length or UTF-8 */
#define WMX_ETOOBIG (-4)      /* value or key over the host's size limit */
#define WMX_EINTERNAL (-5)    /* host-side failure */
#define WMX_EUNSUPPORTED (-6) /* granted, but not available on this node */

#define WMX_LOG_DEBUG 0
#define WMX_LOG_INFO 1
#define WMX_LOG_WARN 2
#define WMX_LOG_ERROR 3

#define WMX_IMPORT(n) __attribute__((import_module("wasmatrix"), import_name(n)))

WMX_IMPORT("log")
int32_t wmx_log(int32_t level, const char *msg, size_t msg_len);

WMX_IMPORT("kv_get")
int32_t wmx_kv_get(const char *ns, size_t ns_len, const char *key, size_t key_len,
                   uint8_t *out, size_t out_cap);

WMX_IMPORT("kv_set")
int32_t wmx_kv_set(const char *ns, size_t ns_len, const char *key, size_t key_len,
                   const uint8_t *val, size_t val_len);

WMX_IMPORT("kv_delete")
int32_t wmx_kv_delete(const char *ns, size_t ns_len, const char *key, size_t key_len);

WMX_IMPORT("kv_list")
int32_t wmx_kv_list(const char *ns, size_t ns_len, const char *prefix, size_t prefix_len,
                    uint8_t *out, size_t out_cap);

WMX_IMPORT("http_fetch")
int32_t wmx_http_fetch(const char *url, size_t url_len, uint8_t *out, size_t out_cap);

#endif

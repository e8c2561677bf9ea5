/*
 * hostile_caller: what a careless or hostile C host does to the keyward
 * PKCS#11 module. It dlopens the module (argv[1], else KEYWARD_MODULE),
 * takes its function tables (C_GetFunctionList and C_GetInterface "PKCS 11"
 * 3.0) and calls every function of both:
 *
 *   - before C_Initialize (every call must answer CKR_CRYPTOKI_NOT_INITIALIZED);
 *   - with NULL for every pointer argument, with zero and ULONG_MAX lengths,
 *     with one-byte and misaligned buffers, and with invalid handles
 *     (0, ULONG_MAX, never issued) and stale ones (from before a
 *     C_Finalize and a new C_Initialize);
 *   - while other threads call C_Finalize and C_Initialize in a loop;
 *   - in a child forked in the middle of a digest and of a search, with and
 *     without a new C_Initialize, and forked while another thread is inside
 *     a call.
 *
 * Every answer must be a CK_RV the specification defines, and some must be
 * one exact value. CKR_GENERAL_ERROR is defined (SoftHSM2 answers it, for
 * one, to C_Sign with CKM_EDDSA on an AES key, and the agent passes a
 * backend's answer through); the module gives it itself only for a panic it
 * caught, which Rust's panic hook reports on standard error as "panicked
 * at": softhsm-config/sanitize fails on that line. The number of
 * CKR_GENERAL_ERROR answers is in the summary. The token is the testbed's: KEYWARD_SOCKET
 * and KEYWARD_PIN from the environment. Prints `calls: N, unexpected: M`
 * and exits 1 when M > 0 (or when a forked child dies or hangs).
 *
 * --no-agent: KEYWARD_SOCKET names no agent; the same calls must fail
 * cleanly. --asan-self-check: proves that the module is instrumented (see
 * self_check).
 *
 * Build: gcc -fsanitize=address -g -O1 -I/usr/include/p11-kit-1
 *        hostile_caller.c -o hostile_caller -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

/* ------------------------------------------------------------------ */
/* The PKCS#11 3.0 table: the 2.40 table followed by 24 functions.     */
/* (The header of p11-kit 0.24 knows only 2.40.)                        */
/* ------------------------------------------------------------------ */

typedef struct {
	CK_UTF8CHAR *pInterfaceName;
	void *pFunctionList;
	CK_FLAGS flags;
} IFACE;

typedef CK_RV (*fn_get_interface_list)(IFACE *, CK_ULONG *);
typedef CK_RV (*fn_get_interface)(CK_UTF8CHAR *, CK_VERSION *, IFACE **, CK_FLAGS);
typedef CK_RV (*fn_h)(CK_SESSION_HANDLE);
typedef CK_RV (*fn_h_flags)(CK_SESSION_HANDLE, CK_FLAGS);
typedef CK_RV (*fn_h_mech_key)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
typedef CK_RV (*fn_login_user)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR *, CK_ULONG,
			       CK_UTF8CHAR *, CK_ULONG);
/* C_EncryptMessage / C_DecryptMessage */
typedef CK_RV (*fn_crypt_msg)(CK_SESSION_HANDLE, void *, CK_ULONG, CK_BYTE *, CK_ULONG,
			      CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);
/* C_*MessageBegin (encrypt, decrypt) */
typedef CK_RV (*fn_crypt_begin)(CK_SESSION_HANDLE, void *, CK_ULONG, CK_BYTE *, CK_ULONG);
/* C_*MessageNext (encrypt, decrypt) */
typedef CK_RV (*fn_crypt_next)(CK_SESSION_HANDLE, void *, CK_ULONG, CK_BYTE *, CK_ULONG,
			       CK_BYTE *, CK_ULONG *, CK_FLAGS);
/* C_SignMessage, C_SignMessageNext */
typedef CK_RV (*fn_sign_msg)(CK_SESSION_HANDLE, void *, CK_ULONG, CK_BYTE *, CK_ULONG,
			     CK_BYTE *, CK_ULONG *);
/* C_SignMessageBegin, C_VerifyMessageBegin */
typedef CK_RV (*fn_msg_begin)(CK_SESSION_HANDLE, void *, CK_ULONG);
/* C_VerifyMessage, C_VerifyMessageNext */
typedef CK_RV (*fn_verify_msg)(CK_SESSION_HANDLE, void *, CK_ULONG, CK_BYTE *, CK_ULONG,
			       CK_BYTE *, CK_ULONG);

typedef struct {
	CK_FUNCTION_LIST v2;
	fn_get_interface_list C_GetInterfaceList;
	fn_get_interface C_GetInterface;
	fn_login_user C_LoginUser;
	fn_h_flags C_SessionCancel;
	fn_h_mech_key C_MessageEncryptInit;
	fn_crypt_msg C_EncryptMessage;
	fn_crypt_begin C_EncryptMessageBegin;
	fn_crypt_next C_EncryptMessageNext;
	fn_h C_MessageEncryptFinal;
	fn_h_mech_key C_MessageDecryptInit;
	fn_crypt_msg C_DecryptMessage;
	fn_crypt_begin C_DecryptMessageBegin;
	fn_crypt_next C_DecryptMessageNext;
	fn_h C_MessageDecryptFinal;
	fn_h_mech_key C_MessageSignInit;
	fn_sign_msg C_SignMessage;
	fn_msg_begin C_SignMessageBegin;
	fn_sign_msg C_SignMessageNext;
	fn_h C_MessageSignFinal;
	fn_h_mech_key C_MessageVerifyInit;
	fn_verify_msg C_VerifyMessage;
	fn_msg_begin C_VerifyMessageBegin;
	fn_verify_msg C_VerifyMessageNext;
	fn_h C_MessageVerifyFinal;
} FL30;

/* ------------------------------------------------------------------ */
/* Counting                                                             */
/* ------------------------------------------------------------------ */

/* In a shared mapping, so forked children count into the same totals. */
struct counts {
	long calls;
	long unexpected;
	long general_errors;
};
static struct counts *C;

static CK_FUNCTION_LIST *F;
static FL30 *F3;
static CK_SLOT_ID slot;
static const char *pin;
/* 0 with --no-agent: KEYWARD_SOCKET names no agent, every call that needs
 * one must fail cleanly */
static int agent = 1;

#define ANY ((CK_RV)-1)

/* Every CKR_* of pkcs11t.h (2.40). */
static const CK_RV DEFINED[] = {
	CKR_OK, CKR_CANCEL, CKR_HOST_MEMORY, CKR_SLOT_ID_INVALID, CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED,
	CKR_ARGUMENTS_BAD, CKR_NO_EVENT, CKR_NEED_TO_CREATE_THREADS, CKR_CANT_LOCK,
	CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID,
	CKR_ATTRIBUTE_VALUE_INVALID, CKR_ACTION_PROHIBITED, CKR_DATA_INVALID, CKR_DATA_LEN_RANGE,
	CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED, CKR_ENCRYPTED_DATA_INVALID,
	CKR_ENCRYPTED_DATA_LEN_RANGE, CKR_FUNCTION_CANCELED, CKR_FUNCTION_NOT_PARALLEL,
	CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_HANDLE_INVALID, CKR_KEY_SIZE_RANGE,
	CKR_KEY_TYPE_INCONSISTENT, CKR_KEY_NOT_NEEDED, CKR_KEY_CHANGED, CKR_KEY_NEEDED,
	CKR_KEY_INDIGESTIBLE, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_NOT_WRAPPABLE,
	CKR_KEY_UNEXTRACTABLE, CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID,
	CKR_OBJECT_HANDLE_INVALID, CKR_OPERATION_ACTIVE, CKR_OPERATION_NOT_INITIALIZED,
	CKR_PIN_INCORRECT, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_EXPIRED, CKR_PIN_LOCKED,
	CKR_SESSION_CLOSED, CKR_SESSION_COUNT, CKR_SESSION_HANDLE_INVALID,
	CKR_SESSION_PARALLEL_NOT_SUPPORTED, CKR_SESSION_READ_ONLY, CKR_SESSION_EXISTS,
	CKR_SESSION_READ_ONLY_EXISTS, CKR_SESSION_READ_WRITE_SO_EXISTS, CKR_SIGNATURE_INVALID,
	CKR_SIGNATURE_LEN_RANGE, CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT,
	CKR_TOKEN_NOT_PRESENT, CKR_TOKEN_NOT_RECOGNIZED, CKR_TOKEN_WRITE_PROTECTED,
	CKR_UNWRAPPING_KEY_HANDLE_INVALID, CKR_UNWRAPPING_KEY_SIZE_RANGE,
	CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, CKR_USER_ALREADY_LOGGED_IN, CKR_USER_NOT_LOGGED_IN,
	CKR_USER_PIN_NOT_INITIALIZED, CKR_USER_TYPE_INVALID, CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
	CKR_USER_TOO_MANY_TYPES, CKR_WRAPPED_KEY_INVALID, CKR_WRAPPED_KEY_LEN_RANGE,
	CKR_WRAPPING_KEY_HANDLE_INVALID, CKR_WRAPPING_KEY_SIZE_RANGE,
	CKR_WRAPPING_KEY_TYPE_INCONSISTENT, CKR_RANDOM_SEED_NOT_SUPPORTED, CKR_RANDOM_NO_RNG,
	CKR_DOMAIN_PARAMS_INVALID, CKR_CURVE_NOT_SUPPORTED, CKR_BUFFER_TOO_SMALL,
	CKR_SAVED_STATE_INVALID, CKR_INFORMATION_SENSITIVE, CKR_STATE_UNSAVEABLE,
	CKR_CRYPTOKI_NOT_INITIALIZED, CKR_CRYPTOKI_ALREADY_INITIALIZED, CKR_MUTEX_BAD,
	CKR_MUTEX_NOT_LOCKED, CKR_NEW_PIN_MODE, CKR_NEXT_OTP, CKR_EXCEEDED_MAX_ITERATIONS,
	CKR_FIPS_SELF_TEST_FAILED, CKR_LIBRARY_LOAD_FAILED, CKR_PIN_TOO_WEAK,
	CKR_PUBLIC_KEY_INVALID, CKR_FUNCTION_REJECTED,
};

static int defined(CK_RV rv)
{
	for (size_t i = 0; i < sizeof DEFINED / sizeof DEFINED[0]; i++)
		if (DEFINED[i] == rv)
			return 1;
	return 0;
}

/* Which call of which scenario, for the message of an unexpected answer. */
static __thread const char *scenario = "start";

/* Counts one call; `want` is the one acceptable answer, or ANY defined one. */
static CK_RV chk(const char *call, CK_RV rv, CK_RV want)
{
	__atomic_add_fetch(&C->calls, 1, __ATOMIC_RELAXED);
	if (rv == CKR_GENERAL_ERROR)
		__atomic_add_fetch(&C->general_errors, 1, __ATOMIC_RELAXED);
	int bad = want == ANY ? !defined(rv) : rv != want;
	if (bad) {
		__atomic_add_fetch(&C->unexpected, 1, __ATOMIC_RELAXED);
		fprintf(stderr, "unexpected: [%s] %s -> 0x%lx", scenario, call, (unsigned long)rv);
		if (want != ANY)
			fprintf(stderr, " (wanted 0x%lx)", (unsigned long)want);
		fputc('\n', stderr);
	}
	return rv;
}

#define CALL(want, fn, ...) chk(#fn, F->fn(__VA_ARGS__), want)
#define CALL3(want, fn, ...) chk(#fn, F3->fn(__VA_ARGS__), want)

/* ------------------------------------------------------------------ */
/* Arguments                                                            */
/* ------------------------------------------------------------------ */

/* How the pointer and length arguments of one sweep look. */
enum shape {
	NULLS,      /* every pointer NULL, every length 0 */
	NULL_HUGE,  /* every pointer NULL, every length ULONG_MAX */
	HUGE,       /* valid small inputs announced as ULONG_MAX bytes */
	SHORT,      /* one-byte outputs and inputs, templates of one byte values */
	MISALIGNED, /* CK_ULONG, CK_MECHANISM and CK_ATTRIBUTE pointers at odd addresses */
	SHAPES
};
static const char *SHAPE_NAME[] = {"nulls", "null+huge", "huge", "short", "misaligned"};

/* The argument set of one sweep; buffers are malloc'ed to their exact size so
 * that AddressSanitizer sees any access past them. */
struct args {
	CK_BYTE *in;            /* input bytes */
	CK_ULONG in_len;
	CK_BYTE *out;           /* output bytes */
	CK_ULONG *out_len;      /* in/out length (possibly misaligned) */
	CK_ULONG *list_count;   /* in/out count of a list */
	CK_SLOT_ID *slots;      /* list of one slot */
	CK_ULONG count;         /* count of an input array */
	CK_ATTRIBUTE *tmpl;     /* template (possibly misaligned) */
	CK_MECHANISM *mech;     /* mechanism (possibly misaligned) */
	CK_OBJECT_HANDLE *objs; /* output handles */
	CK_ULONG max;           /* room in objs */
	void *info;             /* output struct (room for the largest) */
	void *mem;              /* to free */
	void *mem2;
	void *mem3;
	void *mem4;
};

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		perror("malloc");
		exit(2);
	}
	memset(p, 0xA5, n ? n : 1);
	return p;
}

static CK_BYTE attr_value[1] = {1};
static CK_BYTE mech_param[1] = {0};
static CK_UTF8CHAR label32[32] = "hostile                         ";

static void make_args(struct args *a, enum shape s)
{
	memset(a, 0, sizeof *a);
	switch (s) {
	case NULLS:
		break;
	case NULL_HUGE:
		a->in_len = a->count = a->max = ULONG_MAX;
		break;
	case HUGE:
	case SHORT: {
		a->in = xmalloc(1);
		a->in[0] = 'x';
		a->in_len = s == HUGE ? ULONG_MAX : 1;
		a->out = xmalloc(1);
		a->out_len = xmalloc(sizeof(CK_ULONG));
		*a->out_len = s == HUGE ? ULONG_MAX : 1;
		a->list_count = xmalloc(sizeof(CK_ULONG));
		*a->list_count = s == HUGE ? 0 : 1;
		a->slots = xmalloc(sizeof(CK_SLOT_ID));
		a->tmpl = xmalloc(sizeof(CK_ATTRIBUTE));
		a->tmpl->type = CKA_LABEL;
		a->tmpl->pValue = attr_value;
		a->tmpl->ulValueLen = s == HUGE ? ULONG_MAX : 1;
		a->count = s == HUGE ? ULONG_MAX : 1;
		a->mech = xmalloc(sizeof(CK_MECHANISM));
		a->mech->mechanism = CKM_SHA256;
		a->mech->pParameter = mech_param;
		a->mech->ulParameterLen = s == HUGE ? ULONG_MAX : 1;
		a->objs = xmalloc(sizeof(CK_OBJECT_HANDLE));
		/* outputs keep their true size: only input lengths are huge */
		a->max = 1;
		a->info = xmalloc(sizeof(CK_TOKEN_INFO));
		/* a HUGE sweep must not let a module write ULONG_MAX bytes: only
		 * inputs are huge there; *out_len is read by size queries only */
		if (s == HUGE) {
			free(a->out);
			a->out = NULL;
		}
		a->mem = NULL;
		break;
	}
	case MISALIGNED: {
		/* one block, every structure at an odd offset */
		size_t need = 1 + sizeof(CK_ULONG) * 3 + sizeof(CK_ATTRIBUTE) + sizeof(CK_MECHANISM) + 64;
		char *b = xmalloc(need);
		a->mem = b;
		char *p = b + 1;
		a->out_len = (CK_ULONG *)p;
		CK_ULONG v = 64;
		memcpy(p, &v, sizeof v);
		p += sizeof(CK_ULONG);
		a->list_count = (CK_ULONG *)p;
		v = 1;
		memcpy(p, &v, sizeof v);
		p += sizeof(CK_ULONG);
		a->tmpl = (CK_ATTRIBUTE *)p;
		CK_ATTRIBUTE at = {CKA_LABEL, attr_value, 1};
		memcpy(p, &at, sizeof at);
		p += sizeof at;
		a->mech = (CK_MECHANISM *)p;
		CK_MECHANISM m = {CKM_SHA256, NULL, 0};
		memcpy(p, &m, sizeof m);
		p += sizeof m;
		a->objs = (CK_OBJECT_HANDLE *)p; /* room for one, misaligned */
		p += sizeof(CK_ULONG);
		a->slots = (CK_SLOT_ID *)p;
		a->in = xmalloc(1);
		a->in[0] = 'x';
		a->mem2 = a->in;
		a->in_len = 1;
		a->out = xmalloc(64);
		a->mem3 = a->out;
		a->count = 1;
		a->max = 1;
		/* the largest output structure, at an odd address */
		a->mem4 = xmalloc(sizeof(CK_TOKEN_INFO) + 1);
		a->info = (char *)a->mem4 + 1;
		break;
	}
	default:
		break;
	}
}

static void free_args(struct args *a, enum shape s)
{
	if (s == HUGE || s == SHORT) {
		free(a->in);
		free(a->out);
		free(a->out_len);
		free(a->list_count);
		free(a->slots);
		free(a->tmpl);
		free(a->mech);
		free(a->objs);
		free(a->info);
	} else if (s == MISALIGNED) {
		free(a->mem);
		free(a->mem2);
		free(a->mem3);
		free(a->mem4);
	}
}

/* ------------------------------------------------------------------ */
/* One sweep: every function of both tables                             */
/* ------------------------------------------------------------------ */

/*
 * Calls every function once with the arguments of `s`, session `h`, object
 * `o`. `want` is ANY, or the one answer every call must give (before
 * C_Initialize, in a child that has not initialised). C_Initialize and
 * C_Finalize get arguments that leave the module's state alone (a non-NULL
 * pReserved); calls that end a session come last.
 */
static void sweep(enum shape s, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_RV want)
{
	struct args a;
	make_args(&a, s);
	CK_SLOT_ID sl = slot;
	void *junk = (void *)&a; /* a non-NULL pReserved */
	CK_ULONG L = a.in_len;

	/* general */
	if (want != CKR_CRYPTOKI_NOT_INITIALIZED)
		CALL(want == ANY ? ANY : want, C_Initialize, junk); /* reserved junk: bad args or already */
	CALL(want, C_Finalize, junk);
	CALL(want, C_GetInfo, (CK_INFO *)a.info);
	/* slots and tokens */
	CALL(want, C_GetSlotList, CK_TRUE, a.slots, a.list_count);
	CALL(want, C_GetSlotList, CK_FALSE, NULL, a.list_count);
	CALL(want, C_GetSlotInfo, sl, (CK_SLOT_INFO *)a.info);
	CALL(want, C_GetSlotInfo, ULONG_MAX, (CK_SLOT_INFO *)a.info);
	CALL(want, C_GetTokenInfo, sl, (CK_TOKEN_INFO *)a.info);
	CALL(want, C_GetMechanismList, sl, (CK_MECHANISM_TYPE *)a.objs, a.list_count);
	CALL(want, C_GetMechanismInfo, sl, CKM_SHA256, (CK_MECHANISM_INFO *)a.info);
	CALL(want, C_GetMechanismInfo, sl, ULONG_MAX, (CK_MECHANISM_INFO *)a.info);
	CALL(want, C_InitToken, sl, a.in, L, s == NULLS || s == NULL_HUGE ? NULL : label32);
	CALL(want, C_InitPIN, h, a.in, L);
	CALL(want, C_SetPIN, h, a.in, L, a.in, L);
	CALL(want, C_WaitForSlotEvent, CKF_DONT_BLOCK, a.slots, NULL);
	CALL(want, C_WaitForSlotEvent, CKF_DONT_BLOCK, a.slots, junk);
	/* sessions */
	CALL(want, C_GetSessionInfo, h, (CK_SESSION_INFO *)a.info);
	CALL(want, C_OpenSession, sl, 0, NULL, NULL, a.objs);
	CALL(want, C_OpenSession, ULONG_MAX, CKF_SERIAL_SESSION, NULL, NULL, a.objs);
	CALL(want, C_GetOperationState, h, a.out, a.out_len);
	CALL(want, C_SetOperationState, h, a.in, L, o, o);
	CALL(want, C_Login, h, CKU_USER, a.in, L);
	CALL(want, C_Login, h, ULONG_MAX, a.in, L);
	/* objects */
	CALL(want, C_CreateObject, h, a.tmpl, a.count, a.objs);
	CALL(want, C_CopyObject, h, o, a.tmpl, a.count, a.objs);
	CALL(want, C_GetObjectSize, h, o, a.out_len);
	CALL(want, C_GetAttributeValue, h, o, a.tmpl, a.count);
	CALL(want, C_SetAttributeValue, h, o, a.tmpl, a.count);
	CALL(want, C_FindObjectsInit, h, a.tmpl, a.count);
	CALL(want, C_FindObjects, h, a.objs, a.max, a.list_count);
	CALL(want, C_FindObjectsFinal, h);
	/* crypto: each Init, then its continuations, then its one-shot */
	CALL(want, C_EncryptInit, h, a.mech, o);
	CALL(want, C_Encrypt, h, a.in, L, a.out, a.out_len);
	CALL(want, C_EncryptUpdate, h, a.in, L, a.out, a.out_len);
	CALL(want, C_EncryptFinal, h, a.out, a.out_len);
	CALL(want, C_DecryptInit, h, a.mech, o);
	CALL(want, C_Decrypt, h, a.in, L, a.out, a.out_len);
	CALL(want, C_DecryptUpdate, h, a.in, L, a.out, a.out_len);
	CALL(want, C_DecryptFinal, h, a.out, a.out_len);
	CALL(want, C_DigestInit, h, a.mech);
	CALL(want, C_DigestUpdate, h, a.in, L);
	CALL(want, C_DigestKey, h, o);
	CALL(want, C_DigestFinal, h, a.out, a.out_len);
	CALL(want, C_DigestInit, h, a.mech);
	CALL(want, C_Digest, h, a.in, L, a.out, a.out_len);
	CALL(want, C_SignInit, h, a.mech, o);
	CALL(want, C_SignUpdate, h, a.in, L);
	CALL(want, C_SignFinal, h, a.out, a.out_len);
	CALL(want, C_Sign, h, a.in, L, a.out, a.out_len);
	CALL(want, C_SignRecoverInit, h, a.mech, o);
	CALL(want, C_SignRecover, h, a.in, L, a.out, a.out_len);
	CALL(want, C_VerifyInit, h, a.mech, o);
	CALL(want, C_VerifyUpdate, h, a.in, L);
	CALL(want, C_VerifyFinal, h, a.in, L);
	CALL(want, C_Verify, h, a.in, L, a.in, L);
	CALL(want, C_VerifyRecoverInit, h, a.mech, o);
	CALL(want, C_VerifyRecover, h, a.in, L, a.out, a.out_len);
	CALL(want, C_DigestEncryptUpdate, h, a.in, L, a.out, a.out_len);
	CALL(want, C_DecryptDigestUpdate, h, a.in, L, a.out, a.out_len);
	CALL(want, C_SignEncryptUpdate, h, a.in, L, a.out, a.out_len);
	CALL(want, C_DecryptVerifyUpdate, h, a.in, L, a.out, a.out_len);
	/* keys */
	CALL(want, C_GenerateKey, h, a.mech, a.tmpl, a.count, a.objs);
	CALL(want, C_GenerateKeyPair, h, a.mech, a.tmpl, a.count, a.tmpl, a.count, a.objs, a.objs);
	CALL(want, C_WrapKey, h, a.mech, o, o, a.out, a.out_len);
	CALL(want, C_UnwrapKey, h, a.mech, o, a.in, L, a.tmpl, a.count, a.objs);
	CALL(want, C_DeriveKey, h, a.mech, o, a.tmpl, a.count, a.objs);
	/* random */
	CALL(want, C_SeedRandom, h, a.in, L);
	CALL(want, C_GenerateRandom, h, a.out, s == SHORT ? 1 : L);
	/* legacy parallel functions */
	CALL(want, C_GetFunctionStatus, h);
	CALL(want, C_CancelFunction, h);

	/* the 3.0 table */
	{
		CK_ULONG n = s == NULLS || s == NULL_HUGE ? 0 : 1;
		IFACE *one = s == NULLS || s == NULL_HUGE ? NULL : xmalloc(sizeof(IFACE));
		CK_ULONG *cnt = s == NULLS || s == NULL_HUGE ? NULL : &n;
		/* these two are callable at any time */
		CALL3(want == CKR_CRYPTOKI_NOT_INITIALIZED ? ANY : want, C_GetInterfaceList, one, cnt);
		IFACE *got = NULL;
		CALL3(want == CKR_CRYPTOKI_NOT_INITIALIZED ? ANY : want, C_GetInterface,
		      s == NULLS ? NULL : (CK_UTF8CHAR *)"PKCS 11",
		      s == MISALIGNED ? (CK_VERSION *)((char *)a.mem + 1) : NULL,
		      s == NULLS || s == NULL_HUGE ? NULL : &got, s == HUGE ? ULONG_MAX : 0);
		free(one);
	}
	CALL3(want, C_LoginUser, h, CKU_USER, a.in, L, a.in, L);
	CALL3(want, C_SessionCancel, h, ULONG_MAX);
	CALL3(want, C_MessageEncryptInit, h, a.mech, o);
	CALL3(want, C_EncryptMessage, h, a.in, L, a.in, L, a.in, L, a.out, a.out_len);
	CALL3(want, C_EncryptMessageBegin, h, a.in, L, a.in, L);
	CALL3(want, C_EncryptMessageNext, h, a.in, L, a.in, L, a.out, a.out_len, 0);
	CALL3(want, C_MessageEncryptFinal, h);
	CALL3(want, C_MessageDecryptInit, h, a.mech, o);
	CALL3(want, C_DecryptMessage, h, a.in, L, a.in, L, a.in, L, a.out, a.out_len);
	CALL3(want, C_DecryptMessageBegin, h, a.in, L, a.in, L);
	CALL3(want, C_DecryptMessageNext, h, a.in, L, a.in, L, a.out, a.out_len, 0);
	CALL3(want, C_MessageDecryptFinal, h);
	CALL3(want, C_MessageSignInit, h, a.mech, o);
	CALL3(want, C_SignMessage, h, a.in, L, a.in, L, a.out, a.out_len);
	CALL3(want, C_SignMessageBegin, h, a.in, L);
	CALL3(want, C_SignMessageNext, h, a.in, L, a.in, L, a.out, a.out_len);
	CALL3(want, C_MessageSignFinal, h);
	CALL3(want, C_MessageVerifyInit, h, a.mech, o);
	CALL3(want, C_VerifyMessage, h, a.in, L, a.in, L, a.in, L);
	CALL3(want, C_VerifyMessageBegin, h, a.in, L);
	CALL3(want, C_VerifyMessageNext, h, a.in, L, a.in, L, a.in, L);
	CALL3(want, C_MessageVerifyFinal, h);

	/* what ends the session: last */
	CALL(want, C_DestroyObject, h, o);
	CALL(want, C_Logout, h);
	CALL(want, C_CloseSession, h);
	CALL(want, C_CloseAllSessions, ULONG_MAX);
	free_args(&a, s);
}

/* ------------------------------------------------------------------ */
/* Real sessions                                                        */
/* ------------------------------------------------------------------ */

static CK_SESSION_HANDLE open_logged_in(void)
{
	CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
	CALL(CKR_OK, C_OpenSession, slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
	CK_RV rv = F->C_Login(h, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
	if (rv != CKR_USER_ALREADY_LOGGED_IN)
		chk("C_Login", rv, CKR_OK);
	else
		chk("C_Login", rv, CKR_USER_ALREADY_LOGGED_IN);
	return h;
}

/* A session object: an AES key, or CK_INVALID_HANDLE if the policy refuses. */
static CK_OBJECT_HANDLE make_key(CK_SESSION_HANDLE h)
{
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ULONG len = 32;
	CK_BBOOL f = CK_FALSE, t = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_VALUE_LEN, &len, sizeof len},
		{CKA_TOKEN, &f, sizeof f},
		{CKA_ENCRYPT, &t, sizeof t},
		{CKA_DECRYPT, &t, sizeof t},
	};
	CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
	CALL(ANY, C_GenerateKey, h, &m, tmpl, 4, &k);
	return k;
}

static void digest_once(CK_SESSION_HANDLE h, CK_RV want)
{
	CK_MECHANISM m = {CKM_SHA256, NULL, 0};
	CK_BYTE out[32];
	CK_ULONG n = sizeof out;
	CALL(want, C_DigestInit, h, &m);
	CALL(want, C_Digest, h, (CK_BYTE *)"abc", 3, out, &n);
	if (want == CKR_OK && (n != 32 || out[0] != 0xba || out[31] != 0xad)) {
		fprintf(stderr, "unexpected: [%s] SHA-256(\"abc\") is wrong\n", scenario);
		__atomic_add_fetch(&C->unexpected, 1, __ATOMIC_RELAXED);
	}
}

/* ------------------------------------------------------------------ */
/* Scenarios                                                            */
/* ------------------------------------------------------------------ */

static void before_initialize(void)
{
	scenario = "before C_Initialize";
	for (int s = 0; s < SHAPES; s++)
		sweep(s, 1, 1, CKR_CRYPTOKI_NOT_INITIALIZED);
	/* bad initialisation arguments */
	CK_C_INITIALIZE_ARGS args;
	memset(&args, 0, sizeof args);
	args.pReserved = &args;
	CALL(CKR_ARGUMENTS_BAD, C_Initialize, &args);
	memset(&args, 0, sizeof args);
	args.CreateMutex = (CK_CREATEMUTEX)1;
	CALL(CKR_ARGUMENTS_BAD, C_Initialize, &args);
	/* all four mutex functions set, to addresses that are no functions:
	 * the module may refuse them (CKR_CANT_LOCK) or use its own locks,
	 * but never call them */
	for (int os = 0; os < 2; os++) {
		memset(&args, 0, sizeof args);
		args.CreateMutex = (CK_CREATEMUTEX)(uintptr_t)8;
		args.DestroyMutex = (CK_DESTROYMUTEX)(uintptr_t)8;
		args.LockMutex = (CK_LOCKMUTEX)(uintptr_t)8;
		args.UnlockMutex = (CK_UNLOCKMUTEX)(uintptr_t)8;
		args.flags = os ? CKF_OS_LOCKING_OK : 0;
		if (CALL(ANY, C_Initialize, &args) == CKR_OK) {
			CK_ULONG n = 0;
			CALL(ANY, C_GetSlotList, CK_TRUE, NULL, &n);
			CALL(CKR_OK, C_Finalize, NULL);
		}
	}
	/* the arguments at an odd address */
	char *odd = xmalloc(sizeof args + 1);
	memset(&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	memcpy(odd + 1, &args, sizeof args);
	CALL(CKR_OK, C_Initialize, odd + 1);
	free(odd);
	CALL(CKR_CRYPTOKI_ALREADY_INITIALIZED, C_Initialize, NULL);
	CALL(CKR_OK, C_Finalize, NULL);
	CALL(CKR_CRYPTOKI_NOT_INITIALIZED, C_Finalize, NULL);
	CALL(CKR_ARGUMENTS_BAD, C_GetFunctionList, NULL);
}

static void find_slot(void)
{
	CK_ULONG n = 0;
	CALL(CKR_OK, C_GetSlotList, CK_TRUE, NULL, &n);
	if (n == 0) {
		fprintf(stderr, "hostile_caller: the agent shows no token (is KEYWARD_SOCKET set?)\n");
		exit(2);
	}
	CK_SLOT_ID *list = xmalloc(n * sizeof *list);
	CALL(CKR_OK, C_GetSlotList, CK_TRUE, list, &n);
	slot = list[0];
	free(list);
	/* a list one short of the count: CKR_BUFFER_TOO_SMALL and nothing past it */
	if (n > 1) {
		CK_ULONG m = n - 1;
		list = xmalloc(m * sizeof *list);
		CALL(CKR_BUFFER_TOO_SMALL, C_GetSlotList, CK_TRUE, list, &m);
		free(list);
	}
}

/* Without an agent: every call on made-up handles fails with a defined
 * answer, quickly. */
static void every_shape_no_agent(void)
{
	scenario = "no agent";
	CK_ULONG n = 0;
	CALL(ANY, C_GetSlotList, CK_TRUE, NULL, &n);
	CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
	CALL(ANY, C_OpenSession, slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
	for (int s = 0; s < SHAPES; s++) {
		sweep(s, 1, 1, ANY);
		sweep(s, ULONG_MAX, ULONG_MAX, ANY);
	}
}

static void every_shape_every_handle(void)
{
	for (int s = 0; s < SHAPES; s++) {
		char name[64];
		snprintf(name, sizeof name, "%s, live session", SHAPE_NAME[s]);
		scenario = name;
		CK_SESSION_HANDLE h = open_logged_in();
		CK_OBJECT_HANDLE k = make_key(h);
		sweep(s, h, k, ANY);
		snprintf(name, sizeof name, "%s, invalid handles", SHAPE_NAME[s]);
		sweep(s, 0, 0, ANY);
		sweep(s, ULONG_MAX, ULONG_MAX, ANY);
		sweep(s, 0x7eadbeef, 0x7eadbeef, ANY);
	}
}

/* Templates and mechanism parameters built to mislead: a template reused as a
 * failed call left it, mechanism parameters of every wrong size, inner
 * pointers NULL or one byte long announced as ULONG_MAX bytes. */
static void templates_and_parameters(void)
{
	scenario = "templates and parameters";
	CK_SESSION_HANDLE h = open_logged_in();
	CK_OBJECT_HANDLE k = make_key(h);

	/* CKA_VALUE_LEN (a CK_ULONG) into one byte: too small, and the
	 * template comes back with ulValueLen = CK_UNAVAILABLE_INFORMATION */
	CK_BYTE *one = xmalloc(1);
	CK_ATTRIBUTE *t = xmalloc(2 * sizeof *t);
	t[0] = (CK_ATTRIBUTE){CKA_VALUE_LEN, one, 1};
	t[1] = (CK_ATTRIBUTE){CKA_CLASS, NULL, 0};
	CALL(CKR_BUFFER_TOO_SMALL, C_GetAttributeValue, h, k, t, 2);
	/* the same template again, as C hosts do: still too small, nothing
	 * written past the byte */
	CALL(CKR_BUFFER_TOO_SMALL, C_GetAttributeValue, h, k, t, 2);
	CALL(CKR_BUFFER_TOO_SMALL, C_GetAttributeValue, h, k, t, 1);
	/* a template-valued attribute into a buffer of one byte, then of
	 * "unavailable" length */
	t[0] = (CK_ATTRIBUTE){CKA_WRAP_TEMPLATE, one, 1};
	CALL(ANY, C_GetAttributeValue, h, k, t, 1);
	CALL(ANY, C_GetAttributeValue, h, k, t, 1);
	/* an input template-valued attribute of a length that is no number
	 * of attributes, and one whose inner value is announced huge */
	CK_ATTRIBUTE *inner = xmalloc(sizeof *inner);
	*inner = (CK_ATTRIBUTE){CKA_LABEL, one, ULONG_MAX};
	t[0] = (CK_ATTRIBUTE){CKA_WRAP_TEMPLATE, inner, sizeof *inner + 1};
	CALL(ANY, C_SetAttributeValue, h, k, t, 1);
	t[0].ulValueLen = sizeof *inner;
	CALL(ANY, C_SetAttributeValue, h, k, t, 1);
	CALL(ANY, C_FindObjectsInit, h, t, 1);
	CALL(ANY, C_FindObjectsFinal, h);
	/* a CK_BBOOL of eight bytes, a CK_ULONG of one */
	t[0] = (CK_ATTRIBUTE){CKA_TOKEN, inner, 8};
	t[1] = (CK_ATTRIBUTE){CKA_CLASS, one, 1};
	CALL(ANY, C_CreateObject, h, t, 2, &(CK_OBJECT_HANDLE){0});
	free(inner);
	free(t);

	static const CK_MECHANISM_TYPE mechs[] = {
		CKM_AES_CBC_PAD, CKM_AES_GCM, CKM_AES_CTR, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS,
		CKM_RSA_PKCS_OAEP, CKM_ECDH1_DERIVE, 0x1057 /* CKM_EDDSA */, CKM_AES_CBC_ENCRYPT_DATA,
		CKM_DES3_CBC_ENCRYPT_DATA, CKM_SHA256_HMAC_GENERAL, CKM_CONCATENATE_BASE_AND_DATA,
		CKM_CONCATENATE_BASE_AND_KEY, 0x2109 /* CKM_AES_KEY_WRAP */, CKM_DH_PKCS_DERIVE,
		CKM_SHA256, CKM_AES_ECB,
	};
	/* parameter blocks: every word a NULL pointer, a pointer to one byte,
	 * or ULONG_MAX */
	CK_ULONG *words = xmalloc(8 * sizeof(CK_ULONG) + 1);
	for (size_t i = 0; i < sizeof mechs / sizeof mechs[0]; i++) {
		for (int fill = 0; fill < 3; fill++) {
			for (CK_ULONG len = 0; len <= 8 * sizeof(CK_ULONG); len += fill == 2 ? 1 : 8) {
				for (int w = 0; w < 8; w++)
					words[w] = w % 2 ? ULONG_MAX
						 : fill == 0 ? 0 : (CK_ULONG)(uintptr_t)one;
				void *p = fill == 2 ? (char *)words + 1 : (void *)words;
				if (fill == 2)
					memmove(p, words, 8 * sizeof(CK_ULONG));
				char name[96];
				snprintf(name, sizeof name, "mechanism 0x%lx, parameter %s of %lu bytes",
					 (unsigned long)mechs[i], fill == 0 ? "of NULLs" : fill == 1 ? "of one-byte pointers" : "misaligned", (unsigned long)len);
				scenario = name;
				CK_MECHANISM m = {mechs[i], p, len};
				CK_BYTE out[64];
				CK_ULONG n = sizeof out;
				CK_OBJECT_HANDLE d = 0;
				CALL(ANY, C_EncryptInit, h, &m, k);
				CALL(ANY, C_Encrypt, h, one, 1, out, &n);
				CALL(ANY, C_SignInit, h, &m, k);
				n = sizeof out;
				CALL(ANY, C_Sign, h, one, 1, out, &n);
				CALL(ANY, C_DeriveKey, h, &m, k, NULL, 0, &d);
				n = sizeof out;
				CALL(ANY, C_WrapKey, h, &m, k, k, out, &n);
				CALL(ANY, C_UnwrapKey, h, &m, k, one, 1, NULL, 0, &d);
			}
			scenario = "templates and parameters";
			/* the parameter pointer NULL with a length, and one byte
			 * announced as ULONG_MAX */
			CK_MECHANISM m = {mechs[i], NULL, ULONG_MAX};
			CALL(ANY, C_DecryptInit, h, &m, k);
			m.pParameter = one;
			CALL(ANY, C_DecryptInit, h, &m, k);
			CALL(ANY, C_VerifyInit, h, &m, k);
		}
	}
	free(words);
	free(one);
	CALL(CKR_OK, C_CloseSession, h);
}

/* Real buffers of the largest frame's size (64 MiB) and one byte more: the
 * first passes every length check but cannot fit a frame with the request
 * around it, the second is over the limit. Both get a clear answer and the
 * session lives on. */
static void frame_sized_buffers(void)
{
	scenario = "frame-sized buffers";
	const CK_ULONG max = 64UL << 20;
	CK_BYTE *big = xmalloc(max + 1);
	CK_SESSION_HANDLE h = open_logged_in();
	CK_MECHANISM m = {CKM_SHA256, NULL, 0};
	CK_BYTE out[32];
	for (CK_ULONG len = max; len <= max + 1; len++) {
		CALL(CKR_OK, C_DigestInit, h, &m);
		/* refused before anything changes: the digest goes on */
		CALL(CKR_ARGUMENTS_BAD, C_DigestUpdate, h, big, len);
		CALL(CKR_OK, C_DigestFinal, h, out, &(CK_ULONG){sizeof out});
		CALL(CKR_ARGUMENTS_BAD, C_SeedRandom, h, big, len);
		CALL(CKR_ARGUMENTS_BAD, C_Login, h, CKU_SO, big, len);
		CK_ATTRIBUTE t = {CKA_LABEL, big, len};
		CALL(CKR_ARGUMENTS_BAD, C_FindObjectsInit, h, &t, 1);
	}
	CALL(CKR_ARGUMENTS_BAD, C_GenerateRandom, h, big, max + 1);
	/* two buffers that pass alone and cannot fit one frame together */
	CK_MECHANISM v = {CKM_SHA256_HMAC, NULL, 0};
	CALL(ANY, C_VerifyInit, h, &v, CK_INVALID_HANDLE);
	CALL(ANY, C_Verify, h, big, max / 2 + 1, big, max / 2 + 1);
	/* the session still works */
	digest_once(h, CKR_OK);
	CALL(CKR_OK, C_CloseSession, h);
	free(big);
}

/* Handles from before C_Finalize, used after a new C_Initialize. */
static void stale_handles(void)
{
	scenario = "stale handles";
	CK_SESSION_HANDLE h = open_logged_in();
	CK_OBJECT_HANDLE k = make_key(h);
	CK_MECHANISM m = {CKM_SHA256, NULL, 0};
	CALL(CKR_OK, C_DigestInit, h, &m);
	CALL(CKR_OK, C_Finalize, NULL);
	CALL(CKR_CRYPTOKI_NOT_INITIALIZED, C_DigestUpdate, h, (CK_BYTE *)"x", 1);
	CALL(CKR_OK, C_Initialize, NULL);
	CALL(CKR_SESSION_HANDLE_INVALID, C_DigestUpdate, h, (CK_BYTE *)"x", 1);
	CALL(CKR_SESSION_HANDLE_INVALID, C_GetSessionInfo, h, &(CK_SESSION_INFO){0});
	for (int s = 0; s < SHAPES; s++)
		sweep(s, h, k, ANY);
	/* a new session may get the same number: it must be a new session */
	CK_SESSION_HANDLE h2 = open_logged_in();
	digest_once(h2, CKR_OK);
	CK_ULONG n = 0;
	CALL(ANY, C_GetObjectSize, h2, k, &n);
	CALL(CKR_OK, C_CloseSession, h2);
}

/* C_Finalize and C_Initialize in a loop while other threads call. */
static volatile int racing;

static void *racer(void *arg)
{
	(void)arg;
	scenario = "racing C_Finalize";
	CK_BYTE buf[64];
	while (__atomic_load_n(&racing, __ATOMIC_ACQUIRE)) {
		CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
		CALL(ANY, C_OpenSession, slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
		CK_MECHANISM m = {CKM_SHA256, NULL, 0};
		CK_ULONG n = sizeof buf;
		CALL(ANY, C_DigestInit, h, &m);
		CALL(ANY, C_DigestUpdate, h, buf, sizeof buf);
		CALL(ANY, C_DigestFinal, h, buf, &n);
		CK_SESSION_INFO si;
		CALL(ANY, C_GetSessionInfo, h, &si);
		CK_ULONG count = 0;
		CALL(ANY, C_GetSlotList, CK_TRUE, NULL, &count);
		CALL(ANY, C_GenerateRandom, h, buf, 16);
		CALL(ANY, C_FindObjectsInit, h, NULL, 0);
		CK_OBJECT_HANDLE objs[4];
		CALL(ANY, C_FindObjects, h, objs, 4, &count);
		CALL(ANY, C_FindObjectsFinal, h);
		CALL(ANY, C_CloseSession, h);
	}
	return NULL;
}

static void finalize_races(void)
{
	scenario = "racing C_Finalize (main)";
	enum { THREADS = 4, ROUNDS = 12 };
	pthread_t t[THREADS];
	racing = 1;
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, racer, NULL);
	for (int r = 0; r < ROUNDS; r++) {
		usleep(30000);
		CALL(CKR_OK, C_Finalize, NULL);
		usleep(5000);
		CALL(CKR_OK, C_Initialize, NULL);
	}
	__atomic_store_n(&racing, 0, __ATOMIC_RELEASE);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	if (!agent)
		return;
	/* the module still works */
	CK_SESSION_HANDLE h = open_logged_in();
	digest_once(h, CKR_OK);
	CALL(CKR_OK, C_CloseSession, h);
}

/* C_WaitForSlotEvent blocked in one thread while another calls C_Finalize:
 * the wait must end with CKR_CRYPTOKI_NOT_INITIALIZED. */
static void *waiter(void *arg)
{
	scenario = "C_Finalize ends a blocked C_WaitForSlotEvent";
	CK_SLOT_ID got = 0;
	*(CK_RV *)arg = CALL(CKR_CRYPTOKI_NOT_INITIALIZED, C_WaitForSlotEvent, 0, &got, NULL);
	return NULL;
}

static void finalize_ends_a_wait(void)
{
	scenario = "C_Finalize ends a blocked C_WaitForSlotEvent";
	pthread_t t;
	CK_RV rv = ANY;
	pthread_create(&t, NULL, waiter, &rv);
	usleep(200000);
	CALL(CKR_OK, C_Finalize, NULL);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	if (pthread_timedjoin_np(t, NULL, &until) != 0) {
		fprintf(stderr, "unexpected: [%s] the wait did not end within 10 s\n", scenario);
		__atomic_add_fetch(&C->unexpected, 1, __ATOMIC_RELAXED);
		/* the thread still blocks: the process cannot finish cleanly */
		printf("calls: %ld, unexpected: %ld\n", C->calls, C->unexpected);
		_exit(1);
	}
	CALL(CKR_OK, C_Initialize, NULL);
}

/* Threads that share one session without serialising their calls, as the
 * specification asks applications to: answers may be any defined one. */
static CK_SESSION_HANDLE shared;

static void *sharer(void *arg)
{
	(void)arg;
	scenario = "one session, unserialised threads";
	CK_BYTE buf[64];
	for (int i = 0; i < 300; i++) {
		CK_MECHANISM m = {CKM_SHA256, NULL, 0};
		CK_ULONG n = sizeof buf;
		CALL(ANY, C_DigestInit, shared, &m);
		CALL(ANY, C_DigestUpdate, shared, buf, sizeof buf);
		CALL(ANY, C_DigestFinal, shared, buf, &n);
		CK_ULONG count = 0;
		CALL(ANY, C_FindObjectsInit, shared, NULL, 0);
		CK_OBJECT_HANDLE objs[4];
		CALL(ANY, C_FindObjects, shared, objs, 4, &count);
		CALL(ANY, C_FindObjectsFinal, shared);
		n = sizeof buf;
		CALL(ANY, C_Digest, shared, buf, 1, buf, &n);
	}
	return NULL;
}

static void one_session_many_threads(void)
{
	enum { THREADS = 4 };
	pthread_t t[THREADS];
	shared = open_logged_in();
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, sharer, NULL);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	scenario = "one session, unserialised threads";
	/* the session still works once the threads are done */
	CALL(ANY, C_DigestFinal, shared, NULL, &(CK_ULONG){0});
	CALL(ANY, C_FindObjectsFinal, shared);
	digest_once(shared, CKR_OK);
	CALL(CKR_OK, C_CloseSession, shared);
}

/* Waits for a forked child; a child that dies or hangs counts as unexpected. */
static void reap(pid_t pid, const char *what)
{
	int st = 0;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "unexpected: [%s] child %s (status 0x%x)\n", what,
			WIFSIGNALED(st) ? "killed by a signal (crash or hang)" : "failed", st);
		__atomic_add_fetch(&C->unexpected, 1, __ATOMIC_RELAXED);
	}
}

static void fork_mid_operation(void)
{
	for (int reinit = 0; reinit < 2; reinit++) {
		scenario = reinit ? "fork mid-operation, child initialises"
				  : "fork mid-operation, child does not initialise";
		CK_SESSION_HANDLE h = open_logged_in();
		CK_SESSION_HANDLE hf = open_logged_in();
		CK_MECHANISM m = {CKM_SHA256, NULL, 0};
		CALL(CKR_OK, C_DigestInit, h, &m);
		CALL(CKR_OK, C_DigestUpdate, h, (CK_BYTE *)"a", 1);
		CALL(CKR_OK, C_FindObjectsInit, hf, NULL, 0);
		fflush(NULL);
		pid_t pid = fork();
		if (pid == 0) {
			alarm(60);
			/* the parent's sessions are not the child's */
			CALL(CKR_CRYPTOKI_NOT_INITIALIZED, C_DigestUpdate, h, (CK_BYTE *)"b", 1);
			sweep(NULLS, h, 1, CKR_CRYPTOKI_NOT_INITIALIZED);
			sweep(SHORT, hf, 1, CKR_CRYPTOKI_NOT_INITIALIZED);
			if (reinit) {
				CALL(CKR_OK, C_Initialize, NULL);
				CALL(CKR_SESSION_HANDLE_INVALID, C_DigestUpdate, h, (CK_BYTE *)"b", 1);
				CALL(CKR_SESSION_HANDLE_INVALID, C_FindObjectsFinal, hf);
				CK_SESSION_HANDLE c = open_logged_in();
				digest_once(c, CKR_OK);
				sweep(SHORT, c, 1, ANY);
				CALL(CKR_OK, C_Finalize, NULL);
			} else {
				CALL(CKR_CRYPTOKI_NOT_INITIALIZED, C_Finalize, NULL);
			}
			_exit(0);
		}
		/* the parent's operations go on */
		CK_BYTE out[32];
		CK_ULONG n = sizeof out;
		CALL(CKR_OK, C_DigestUpdate, h, (CK_BYTE *)"bc", 2);
		CALL(CKR_OK, C_DigestFinal, h, out, &n);
		if (n != 32 || out[0] != 0xba || out[31] != 0xad) {
			fprintf(stderr, "unexpected: [%s] the parent's digest changed\n", scenario);
			__atomic_add_fetch(&C->unexpected, 1, __ATOMIC_RELAXED);
		}
		CK_OBJECT_HANDLE objs[4];
		CK_ULONG cnt = 0;
		CALL(CKR_OK, C_FindObjects, hf, objs, 4, &cnt);
		CALL(CKR_OK, C_FindObjectsFinal, hf);
		reap(pid, scenario);
		CALL(CKR_OK, C_CloseSession, h);
		CALL(CKR_OK, C_CloseSession, hf);
	}
}

/* Forks while other threads are inside calls: whatever lock they held, the
 * child must be able to initialise and work. */
static void fork_while_threads_call(void)
{
	scenario = "fork while threads call";
	enum { THREADS = 3, FORKS = 6 };
	pthread_t t[THREADS];
	racing = 1;
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, racer, NULL);
	for (int i = 0; i < FORKS; i++) {
		usleep(20000);
		fflush(NULL);
		pid_t pid = fork();
		if (pid == 0) {
			alarm(60);
			scenario = "forked while threads call (child)";
			CK_ULONG n = 0;
			CALL(CKR_CRYPTOKI_NOT_INITIALIZED, C_GetSlotList, CK_TRUE, NULL, &n);
			CALL(CKR_OK, C_Initialize, NULL);
			CK_SESSION_HANDLE c = open_logged_in();
			digest_once(c, CKR_OK);
			CALL(CKR_OK, C_CloseSession, c);
			CALL(CKR_OK, C_Finalize, NULL);
			_exit(0);
		}
		reap(pid, scenario);
	}
	__atomic_store_n(&racing, 0, __ATOMIC_RELEASE);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
}

/* Phases and their number of calls, for the summary. */
static void phase(const char *name, void (*run)(void))
{
	long before = __atomic_load_n(&C->calls, __ATOMIC_RELAXED);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	run();
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%-28s %8ld calls %6.2f s\n", name, __atomic_load_n(&C->calls, __ATOMIC_RELAXED) - before,
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	fflush(stdout);
}

/* --asan-self-check: a call the caller gets wrong on purpose (C_GetInfo into
 * a one-byte buffer). Under AddressSanitizer with an instrumented module the
 * module's write is reported and the process dies; anything else means the
 * run would not see the module's memory errors. */
static int self_check(void)
{
	CALL(CKR_OK, C_Initialize, NULL);
	void *tiny = xmalloc(1);
	CALL(ANY, C_GetInfo, (CK_INFO *)tiny);
	free(tiny);
	fprintf(stderr, "hostile_caller: a write past a one-byte buffer went unnoticed: "
			"the module is not instrumented\n");
	return 3;
}

int main(int argc, char **argv)
{
	const char *path = getenv("KEYWARD_MODULE");
	int check_asan = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--no-agent"))
			agent = 0;
		else if (!strcmp(argv[i], "--asan-self-check"))
			check_asan = 1;
		else
			path = argv[i];
	}
	pin = getenv("KEYWARD_PIN");
	if (!path || (agent && !check_asan && !pin)) {
		fprintf(stderr, "usage: KEYWARD_PIN=... KEYWARD_SOCKET=... hostile_caller "
				"[--no-agent | --asan-self-check] MODULE.so\n");
		return 2;
	}
	C = mmap(NULL, sizeof *C, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (C == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		fprintf(stderr, "hostile_caller: %s\n", dlerror());
		return 2;
	}
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
	fn_get_interface get_iface = (fn_get_interface)dlsym(lib, "C_GetInterface");
	if (!get || !get_iface) {
		fprintf(stderr, "hostile_caller: the module lacks C_GetFunctionList or C_GetInterface\n");
		return 2;
	}
	chk("C_GetFunctionList", get(&F), CKR_OK);
	IFACE *iface = NULL;
	CK_VERSION v3 = {3, 0};
	chk("C_GetInterface", get_iface((CK_UTF8CHAR *)"PKCS 11", &v3, &iface, 0), CKR_OK);
	if (!F || !iface || !iface->pFunctionList) {
		fprintf(stderr, "hostile_caller: no function table\n");
		return 2;
	}
	F3 = iface->pFunctionList;
	if (F3->v2.version.major != 3) {
		fprintf(stderr, "hostile_caller: C_GetInterface gave version %d\n", F3->v2.version.major);
		return 2;
	}

	if (check_asan)
		return self_check();

	phase("before C_Initialize", before_initialize);
	scenario = "initialise";
	CALL(CKR_OK, C_Initialize, NULL);
	if (agent) {
		phase("find the slot", find_slot);
		phase("every shape, every handle", every_shape_every_handle);
		phase("templates and parameters", templates_and_parameters);
		phase("frame-sized buffers", frame_sized_buffers);
		phase("stale handles", stale_handles);
		phase("C_Finalize racing calls", finalize_races);
		phase("C_Finalize ends a wait", finalize_ends_a_wait);
		phase("one session, many threads", one_session_many_threads);
		phase("fork mid-operation", fork_mid_operation);
		phase("fork while threads call", fork_while_threads_call);
	} else {
		phase("no agent", every_shape_no_agent);
		phase("C_Finalize racing calls", finalize_races);
	}
	scenario = "end";
	CALL(CKR_OK, C_Finalize, NULL);
	dlclose(lib);

	printf("CKR_GENERAL_ERROR answers: %ld\n", C->general_errors);
	printf("calls: %ld, unexpected: %ld\n", C->calls, C->unexpected);
	return C->unexpected ? 1 : 0;
}

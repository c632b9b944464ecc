import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import protobuf from 'protobufjs'
import { ROOT_URL } from '../paths.js'

/** Decoded shapes of the minimal protos in `proto/` (int64 as number, defaults filled in). */
export interface PbDescriptor {
  mediaType: string
  digest: string
  size: number
}
export interface PbImage {
  name: string
  target: PbDescriptor | null
}
export interface PbInfo {
  digest: string
  size: number
}
export interface PbStatus {
  ref: string
  offset: number
  total: number
  expected: string
}
export interface PbEnvelope {
  namespace: string
  topic: string
  event: { typeUrl: string; value: Buffer } | null
}

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall
type ServerStream<Req> = (
  req: Req,
  md: grpc.Metadata,
  options?: grpc.CallOptions,
) => grpc.ClientReadableStream<unknown>

interface ImagesClient extends grpc.Client {
  Get: Unary<{ name: string }, { image: PbImage | null }>
  List: Unary<{ filters: string[] }, { images: PbImage[] }>
}
export interface PbWriteRequest {
  action: 'STAT' | 'WRITE' | 'COMMIT'
  ref: string
  total?: number
  expected?: string
  offset?: number
  data?: Buffer
}
export interface PbWriteResponse {
  action: string
  offset: number
  total: number
  digest: string
}

interface ContentClient extends grpc.Client {
  Info: Unary<{ digest: string }, { info: PbInfo | null }>
  Read: ServerStream<{ digest: string; offset: number; size: number }>
  ListStatuses: Unary<{ filters: string[] }, { statuses: PbStatus[] }>
  Abort: Unary<{ ref: string }, Record<string, never>>
  Write: (
    md: grpc.Metadata,
    options?: grpc.CallOptions,
  ) => grpc.ClientDuplexStream<PbWriteRequest, PbWriteResponse>
}
interface EventsClient extends grpc.Client {
  Subscribe: ServerStream<{ filters: string[] }>
}

const PROTO_DIR = fileURLToPath(new URL('proto/', ROOT_URL))
const PROTO_FILES = ['images.proto', 'content.proto', 'events.proto']
/** Decoding as @grpc/proto-loader did with `longs: Number, enums: String, defaults: true, arrays: true`. */
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, arrays: true }

/**
 * A grpc-js client class for one service of the protos, with protobufjs doing what @grpc/proto-loader
 * did (`fromObject` + `encode`, `decode` + `toObject`). Why not proto-loader: it also builds and keeps a
 * serialized file descriptor per message type for reflection, through protobufjs' descriptor.proto
 * support, which we never use: ~3 MiB of an idle daemon's RSS (bench/memory.ts).
 */
function clientClass(root: protobuf.Root, name: string): grpc.ServiceClientConstructor {
  const service = root.lookupService(name)
  const definition: Record<string, grpc.MethodDefinition<object, object>> = {}
  for (const method of service.methodsArray) {
    const req = method.resolvedRequestType as protobuf.Type
    const res = method.resolvedResponseType as protobuf.Type
    const serialize = (type: protobuf.Type) => (value: object) => {
      const bytes = type.encode(type.fromObject(value)).finish()
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    }
    const deserialize = (type: protobuf.Type) => (bytes: Buffer) =>
      type.toObject(type.decode(bytes), TO_OBJECT)
    definition[method.name] = {
      path: `/${service.fullName.slice(1)}/${method.name}`,
      requestStream: method.requestStream === true,
      responseStream: method.responseStream === true,
      requestSerialize: serialize(req),
      requestDeserialize: deserialize(req),
      responseSerialize: serialize(res),
      responseDeserialize: deserialize(res),
    }
  }
  return grpc.makeGenericClientConstructor(definition, name)
}

/** Typed gRPC clients for containerd's Images, Content and Events services over one unix socket. */
export class ContainerdClient {
  readonly images: ImagesClient
  readonly content: ContentClient
  readonly events: EventsClient
  private readonly imageEvent: protobuf.Type

  constructor(
    readonly address: string,
    readonly namespace: string,
  ) {
    // field names in camelCase (protobufjs' default, as proto-loader's keepCase: false)
    const root = protobuf.loadSync(PROTO_FILES.map((f) => join(PROTO_DIR, f)))
    root.resolveAll()
    const target = address.startsWith('unix:') ? address : `unix://${address}`
    const options: grpc.ClientOptions = {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      // HTTP/2's default 64 KiB window stalls Content/Read on WINDOW_UPDATEs; 8 MiB doubled gRPC reads here
      'grpc-node.flow_control_window': 8 * 1024 * 1024,
      // reconnect quickly after a containerd restart
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2000,
    }
    const creds = grpc.credentials.createInsecure()
    const client = (name: string): grpc.Client =>
      new (clientClass(root, `containerd.services.${name}`))(target, creds, options)
    this.images = client('images.v1.Images') as unknown as ImagesClient
    this.content = client('content.v1.Content') as unknown as ContentClient
    this.events = client('events.v1.Events') as unknown as EventsClient
    this.imageEvent = root.lookupType('containerd.services.events.v1.ImageEvent')
  }

  metadata(): grpc.Metadata {
    const md = new grpc.Metadata()
    md.set('containerd-namespace', this.namespace)
    return md
  }

  /** Calls a unary method with the namespace, a deadline and abort support. */
  unary<Req, Res>(
    method: Unary<Req, Res>,
    client: grpc.Client,
    req: Req,
    signal: AbortSignal | undefined,
    timeoutMs = 10_000,
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted()
      const call = method.call(
        client,
        req,
        this.metadata(),
        { deadline: Date.now() + timeoutMs },
        (err, res) => {
          signal?.removeEventListener('abort', onAbort)
          if (err !== null) reject(err)
          else resolve(res)
        },
      )
      const onAbort = (): void => call.cancel()
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** The image name from an `/images/*` event payload (ImageCreate, ImageUpdate and ImageDelete alike). */
  decodeImageEventName(value: Uint8Array): string {
    return (this.imageEvent.decode(value) as unknown as { name: string }).name
  }

  close(): void {
    this.images.close()
    this.content.close()
    this.events.close()
  }
}
